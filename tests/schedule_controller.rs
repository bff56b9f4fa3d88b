//! The schedule controller against a real kube-apiserver, kube-controller-manager's job
//! controller and the local node agent, with the whole operator running in this process.
//!
//! The operator's schedule controller reads a hand-set clock ([`ManualClock`]): each test
//! moves it past due times instead of waiting for them, and every move makes the controller
//! look at every schedule again.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use recac_api::{AgentTask, AgentTaskSchedule, TaskPhase, schedule_labels};
use recac_operator::{Operator, OperatorSetup};
use recac_runtime::Leadership;
use recac_runtime::config::OperatorSettings;
use recac_schedule::decide::run_name;
use recac_schedule::{Clock, ManualClock};
use recac_task_controller::{AgentDefaults, TaskControllerConfig};
use recac_testenv::{ControlPlane, ControlPlaneOptions, NodeAgent, NodeAgentOptions};
use recac_tests::{
    RunningOperator, control_plane, http_get, kubectl, kubectl_stdin,
    operator_service_account_config, repo_root, text, wait_for,
};

/// Stands in for `recac start`: behaves as FAKE_MODE says and reports like the agent.
const FAKE_AGENT: &str = r#"
echo "agent: task=$RECAC_TASK attempt=$RECAC_ATTEMPT"
case "$FAKE_MODE" in
  fail) echo "attempt $RECAC_ATTEMPT failed"; exit 1 ;;
  sleep) sleep 300 ;;
esac
printf '{"outcome":"succeeded","branch":"%s","commit":"c0ffee%s","summary":"done"}' "$RECAC_BRANCH" "$RECAC_ATTEMPT" > "$RECAC_RESULT_PATH"
"#;

const LONG: Duration = Duration::from_secs(60);

/// The operator running in this test, with its schedule controller on `clock`.
struct Running;

impl Running {
    async fn start(
        config: kube::Config,
        namespace: &str,
        clock: Arc<ManualClock>,
    ) -> RunningOperator {
        Self::start_with(config, namespace, clock, Leadership::always()).await
    }

    /// Writing only while `leadership` allows it.
    async fn start_with(
        config: kube::Config,
        namespace: &str,
        clock: Arc<ManualClock>,
        leadership: Leadership,
    ) -> RunningOperator {
        let setup = OperatorSetup {
            operator: OperatorSettings {
                namespaces: vec![namespace.to_string()],
                ..Default::default()
            },
            task_controller: TaskControllerConfig {
                retry_backoff_seconds: 1,
                max_retry_backoff_seconds: 2,
                queue_poll_seconds: 1,
                ..Default::default()
            },
            agent: AgentDefaults {
                command: vec!["sh".into(), "-c".into(), FAKE_AGENT.into()],
                ..Default::default()
            },
            instance: "test".into(),
            ..Default::default()
        };
        let operator = Operator::build(config, setup, leadership)
            .expect("builds")
            .with_schedule_clock(clock);
        RunningOperator::run(operator, Duration::from_secs(15)).await
    }
}

struct Setup {
    plane: &'static ControlPlane,
    client: Client,
    config: kube::Config,
    ns: String,
    node: NodeAgent,
    clock: Arc<ManualClock>,
}

async fn plane() -> &'static ControlPlane {
    let plane = control_plane(ControlPlaneOptions {
        controller_manager: true,
        ..Default::default()
    })
    .await;
    plane
        .install_crds(&[AgentTaskSchedule::crd()])
        .await
        .expect("the AgentTaskSchedule CRD installs");
    plane
}

async fn setup(prefix: &str) -> Setup {
    let plane = plane().await;
    let ns = plane.namespace(prefix).await.expect("namespace");
    let client = plane.client().await.expect("client");
    let config = plane.config().await.expect("client config");
    let node = NodeAgent::start(
        client.clone(),
        NodeAgentOptions {
            namespaces: vec![ns.clone()],
            ..Default::default()
        },
    )
    .await
    .expect("node agent starts");
    Setup {
        plane,
        client,
        config,
        ns,
        node,
        clock: Arc::new(ManualClock::new(Timestamp::now())),
    }
}

fn schedule_yaml(name: &str, schedule: &str, extra: &str, mode: &str) -> String {
    format!(
        r#"
apiVersion: recac.io/v1alpha1
kind: AgentTaskSchedule
metadata:
  name: {name}
spec:
  schedule: "{schedule}"
{extra}  taskTemplate:
    metadata:
      labels:
        team: platform
    spec:
      prompt: bump the dependencies
      repository:
        url: https://git.example.com/org/repo.git
      maxRetries: 0
      agent:
        env:
          - name: FAKE_MODE
            value: "{mode}"
"#
    )
}

async fn create_schedule(s: &Setup, yaml: &str) -> AgentTaskSchedule {
    let schedule: AgentTaskSchedule = serde_saphyr::from_str(yaml).expect("schedule yaml");
    let api: Api<AgentTaskSchedule> = Api::namespaced(s.client.clone(), &s.ns);
    api.create(&PostParams::default(), &schedule)
        .await
        .expect("schedule created")
}

fn schedules(s: &Setup) -> Api<AgentTaskSchedule> {
    Api::namespaced(s.client.clone(), &s.ns)
}

fn tasks(s: &Setup) -> Api<AgentTask> {
    Api::namespaced(s.client.clone(), &s.ns)
}

/// The tasks of schedule `name`, by name.
async fn tasks_of(s: &Setup, name: &str) -> Vec<AgentTask> {
    let mut list = tasks(s)
        .list(&ListParams::default().labels(&format!("{}={name}", schedule_labels::SCHEDULE)))
        .await
        .expect("tasks list")
        .items;
    list.sort_by_key(|t| t.name_any());
    list
}

async fn names_of(s: &Setup, name: &str) -> Vec<String> {
    tasks_of(s, name)
        .await
        .iter()
        .map(|t| t.name_any())
        .collect()
}

async fn schedule_where(
    s: &Setup,
    name: &str,
    what: &str,
    pred: impl Fn(&AgentTaskSchedule) -> bool,
) -> AgentTaskSchedule {
    let api = schedules(s);
    wait_for(what, LONG, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let schedule = api.get(name).await.ok()?;
            pred(&schedule).then_some(schedule)
        }
    })
    .await
}

async fn task_where(
    s: &Setup,
    name: &str,
    what: &str,
    pred: impl Fn(&AgentTask) -> bool,
) -> AgentTask {
    let api = tasks(s);
    wait_for(what, LONG, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let task = api.get(name).await.ok()?;
            pred(&task).then_some(task)
        }
    })
    .await
}

fn phase(task: &AgentTask) -> Option<TaskPhase> {
    task.status.as_ref().and_then(|s| s.phase)
}

/// A condition of the schedule as (status, reason, message).
fn condition(schedule: &AgentTaskSchedule, type_: &str) -> Option<(String, String, String)> {
    schedule
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn last_schedule(schedule: &AgentTaskSchedule) -> Option<Timestamp> {
    schedule
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0)
}

fn ready(schedule: &AgentTaskSchedule) -> bool {
    condition(schedule, "Ready").is_some_and(|c| c.0 == "True")
}

/// The first whole minute after `t`.
fn minute_after(t: Timestamp) -> Timestamp {
    Timestamp::from_second((t.as_second().div_euclid(60) + 1) * 60).expect("time")
}

/// Moves the clock to `due` plus a few seconds.
fn move_to(clock: &ManualClock, due: Timestamp) {
    clock.set(
        due.checked_add(jiff::SignedDuration::from_secs(5))
            .expect("time"),
    );
}

/// Events about schedule `name` with `reason`, as their notes.
async fn events(s: &Setup, name: &str, reason: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    api.list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("AgentTaskSchedule")
        })
        .filter_map(|e| e.note)
        .collect()
}

async fn event_with(s: &Setup, name: &str, reason: &str, needle: &str) -> String {
    wait_for(&format!("a {reason} event"), LONG, || async move {
        events(s, name, reason)
            .await
            .into_iter()
            .find(|note| note.contains(needle))
    })
    .await
}

/// Lets the controller act on anything it would still do, so "nothing happened" means it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_due_time_creates_one_task_owned_by_the_schedule() {
    let s = setup("sc-due").await;
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    create_schedule(&s, &schedule_yaml("nightly", "* * * * *", "", "succeed")).await;
    schedule_where(&s, "nightly", "Ready", ready).await;
    settle().await;
    assert!(
        names_of(&s, "nightly").await.is_empty(),
        "nothing is due yet"
    );

    let first = minute_after(s.clock.now());
    move_to(&s.clock, first);
    let schedule = schedule_where(&s, "nightly", "the first run", |sc| {
        last_schedule(sc) == Some(first)
    })
    .await;
    let name = run_name("nightly", first);
    assert_eq!(names_of(&s, "nightly").await, vec![name.clone()]);
    let task = tasks(&s).get(&name).await.expect("the run's task");
    let owner = &task.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("AgentTaskSchedule", "nightly", Some(true))
    );
    assert_eq!(Some(owner.uid.clone()), schedule.uid());
    assert_eq!(task.labels()["team"], "platform");
    assert_eq!(
        task.annotations()[schedule_labels::SCHEDULED_AT],
        first.to_string()
    );
    event_with(&s, "nightly", "Created", &name).await;

    let second = minute_after(first);
    move_to(&s.clock, second);
    schedule_where(&s, "nightly", "the second run", |sc| {
        last_schedule(sc) == Some(second)
    })
    .await;
    settle().await;
    assert_eq!(
        names_of(&s, "nightly").await,
        vec![name.clone(), run_name("nightly", second)]
    );

    // Each run's task really runs; the schedule records the latest success.
    task_where(&s, &name, "the first run to succeed", |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    let schedule = schedule_where(&s, "nightly", "lastSuccessfulTime", |sc| {
        sc.status
            .as_ref()
            .is_some_and(|st| st.last_successful_time.is_some())
    })
    .await;
    let status = schedule.status.expect("status");
    assert_eq!(
        status.next_schedule_time.map(|t| t.0),
        Some(minute_after(second))
    );

    let (_, metrics) = http_get(operator.http, "/metrics").await;
    assert!(
        metrics.contains("recac_schedule_runs_created_total 2"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("recac_schedule_errors_total{"),
        "{metrics}"
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_while_a_task_runs_and_says_so() {
    let s = setup("sc-forbid").await;
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    create_schedule(
        &s,
        &schedule_yaml(
            "exclusive",
            "* * * * *",
            "  concurrencyPolicy: Forbid\n",
            "sleep",
        ),
    )
    .await;
    schedule_where(&s, "exclusive", "Ready", ready).await;
    let first = minute_after(s.clock.now());
    move_to(&s.clock, first);
    let running = run_name("exclusive", first);
    task_where(&s, &running, "the first run running", |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;

    let second = minute_after(first);
    move_to(&s.clock, second);
    let schedule = schedule_where(&s, "exclusive", "a Skipped condition", |sc| {
        condition(sc, "Skipped").is_some_and(|c| c.0 == "True")
    })
    .await;
    let (_, reason, message) = condition(&schedule, "Skipped").expect("Skipped");
    assert_eq!(reason, "ConcurrencyForbid");
    assert!(message.contains(&running), "{message}");
    assert_eq!(last_schedule(&schedule), Some(first));
    event_with(&s, "exclusive", "Skipped", &running).await;
    settle().await;
    assert_eq!(names_of(&s, "exclusive").await, vec![running]);
    assert_eq!(
        schedule.status.and_then(|st| st.active_count),
        Some(1),
        "the running task is the active one"
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_deletes_the_running_task_and_its_job() {
    let s = setup("sc-replace").await;
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    create_schedule(
        &s,
        &schedule_yaml(
            "freshest",
            "* * * * *",
            "  concurrencyPolicy: Replace\n",
            "sleep",
        ),
    )
    .await;
    schedule_where(&s, "freshest", "Ready", ready).await;
    let first = minute_after(s.clock.now());
    move_to(&s.clock, first);
    let old = run_name("freshest", first);
    let task = task_where(&s, &old, "the first run running", |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;
    let job = task.status.and_then(|st| st.job_name).expect("a Job");

    let second = minute_after(first);
    move_to(&s.clock, second);
    let new = run_name("freshest", second);
    task_where(&s, &new, "the replacing run running", |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("the replaced task and its Job to be gone", LONG, || {
        let (tasks, jobs, old, job) = (tasks(&s), jobs.clone(), old.clone(), job.clone());
        async move {
            let task_gone = tasks.get_opt(&old).await.ok()?.is_none();
            let job_gone = jobs.get_opt(&job).await.ok()?.is_none();
            (task_gone && job_gone).then_some(())
        }
    })
    .await;
    event_with(&s, "freshest", "Replaced", &old).await;
    let schedule = schedules(&s).get("freshest").await.expect("schedule");
    let active: Vec<String> = schedule
        .status
        .expect("status")
        .active
        .into_iter()
        .filter_map(|r| r.name)
        .collect();
    assert_eq!(active, vec![new]);
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_holds_runs_and_resuming_creates_only_the_latest_missed() {
    let s = setup("sc-suspend").await;
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    create_schedule(&s, &schedule_yaml("paused", "* * * * *", "", "succeed")).await;
    schedule_where(&s, "paused", "Ready", ready).await;
    let first = minute_after(s.clock.now());
    move_to(&s.clock, first);
    schedule_where(&s, "paused", "the first run", |sc| {
        last_schedule(sc) == Some(first)
    })
    .await;

    let patch = |suspend: bool| serde_json::json!({"spec": {"suspend": suspend}});
    schedules(&s)
        .patch(
            "paused",
            &PatchParams::default(),
            &Patch::Merge(&patch(true)),
        )
        .await
        .expect("suspended");
    let schedule = schedule_where(&s, "paused", "Ready=False Suspended", |sc| {
        condition(sc, "Ready").is_some_and(|c| c.1 == "Suspended")
    })
    .await;
    assert!(
        schedule
            .status
            .as_ref()
            .is_some_and(|st| st.next_schedule_time.is_none())
    );
    let third = minute_after(minute_after(first));
    move_to(&s.clock, third);
    settle().await;
    assert_eq!(
        names_of(&s, "paused").await,
        vec![run_name("paused", first)]
    );

    schedules(&s)
        .patch(
            "paused",
            &PatchParams::default(),
            &Patch::Merge(&patch(false)),
        )
        .await
        .expect("resumed");
    schedule_where(&s, "paused", "the latest missed run", |sc| {
        last_schedule(sc) == Some(third)
    })
    .await;
    settle().await;
    assert_eq!(
        names_of(&s, "paused").await,
        vec![run_name("paused", first), run_name("paused", third)],
        "the run missed in between is not created"
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_zone_schedule_runs_each_wall_clock_time_once_across_spring_forward() {
    let s = setup("sc-dst").await;
    // America/New_York springs forward on 2027-03-14: 02:00 EST becomes 03:00 EDT, so
    // 02:30 does not exist that day.
    let start: Timestamp = "2027-03-13T12:00:00Z".parse().expect("time");
    s.clock.set(start);
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    create_schedule(
        &s,
        &schedule_yaml(
            "dst",
            "30 2 * * *",
            "  timeZone: America/New_York\n  suspend: true\n",
            "succeed",
        ),
    )
    .await;
    // The schedule was created now (real time, months before the clock's day): record the
    // 13th's run as the latest, as if it had been running all along, then resume.
    let last: Timestamp = "2027-03-13T07:30:00Z".parse().expect("time");
    let status = serde_json::json!({
        "apiVersion": "recac.io/v1alpha1",
        "kind": "AgentTaskSchedule",
        "status": {"lastScheduleTime": last.to_string()},
    });
    schedules(&s)
        .patch_status(
            "dst",
            &PatchParams::apply("schedule-test").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("status patched");
    schedule_where(&s, "dst", "the recorded run", |sc| {
        last_schedule(sc) == Some(last)
    })
    .await;
    schedules(&s)
        .patch(
            "dst",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"suspend": false}})),
        )
        .await
        .expect("resumed");
    let schedule = schedule_where(&s, "dst", "Ready", ready).await;
    let spring: Timestamp = "2027-03-14T07:30:00Z".parse().expect("time"); // 03:30 EDT
    assert_eq!(
        schedule
            .status
            .and_then(|st| st.next_schedule_time)
            .map(|t| t.0),
        Some(spring)
    );
    settle().await;
    assert!(names_of(&s, "dst").await.is_empty());

    s.clock.set("2027-03-14T07:29:00Z".parse().expect("time"));
    settle().await;
    assert!(
        names_of(&s, "dst").await.is_empty(),
        "not due before 03:30 EDT"
    );
    move_to(&s.clock, spring);
    schedule_where(&s, "dst", "the spring-forward run", |sc| {
        last_schedule(sc) == Some(spring)
    })
    .await;
    // The next day, 02:30 exists again: 06:30 UTC in EDT.
    let next: Timestamp = "2027-03-15T06:30:00Z".parse().expect("time");
    move_to(&s.clock, next);
    schedule_where(&s, "dst", "the run after the change", |sc| {
        last_schedule(sc) == Some(next)
    })
    .await;
    settle().await;
    let runs = tasks_of(&s, "dst").await;
    let due: Vec<String> = runs
        .iter()
        .map(|t| t.annotations()[schedule_labels::SCHEDULED_AT].clone())
        .collect();
    assert_eq!(due, vec![spring.to_string(), next.to_string()]);
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_limits_delete_the_oldest_finished_tasks_and_their_jobs() {
    let s = setup("sc-history").await;
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    create_schedule(
        &s,
        &schedule_yaml(
            "kept",
            "* * * * *",
            "  successfulTasksHistoryLimit: 1\n",
            "succeed",
        ),
    )
    .await;
    create_schedule(
        &s,
        &schedule_yaml(
            "failing",
            "* * * * *",
            "  failedTasksHistoryLimit: 0\n",
            "fail",
        ),
    )
    .await;
    schedule_where(&s, "kept", "Ready", ready).await;
    schedule_where(&s, "failing", "Ready", ready).await;

    let mut due = s.clock.now();
    let mut kept = Vec::new();
    for _ in 0..3 {
        due = minute_after(due);
        move_to(&s.clock, due);
        let name = run_name("kept", due);
        task_where(&s, &name, "the run to succeed", |t| {
            phase(t) == Some(TaskPhase::Succeeded)
        })
        .await;
        kept.push(name);
    }
    let latest = kept.last().cloned().expect("runs");
    wait_for("only the latest succeeded task to remain", LONG, || {
        let latest = latest.clone();
        let s = &s;
        async move { (names_of(s, "kept").await == vec![latest]).then_some(()) }
    })
    .await;
    // Their Jobs went with them.
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("the deleted tasks' Jobs to be gone", LONG, || {
        let jobs = jobs.clone();
        let gone = kept[..2].to_vec();
        async move {
            let list = jobs.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .all(|j| {
                    !gone
                        .iter()
                        .any(|t| j.labels().get("recac.io/task") == Some(t))
                })
                .then_some(())
        }
    })
    .await;
    event_with(&s, "kept", "Deleted", "successfulTasksHistoryLimit 1").await;

    // A failed run is deleted at once with a limit of 0.
    wait_for("the failed runs to be deleted", LONG, || {
        let s = &s;
        async move { names_of(s, "failing").await.is_empty().then_some(()) }
    })
    .await;
    event_with(&s, "failing", "Deleted", "failedTasksHistoryLimit 0").await;
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_mid_schedule_creates_nothing_twice() {
    let s = setup("sc-restart").await;
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    create_schedule(&s, &schedule_yaml("steady", "* * * * *", "", "succeed")).await;
    schedule_where(&s, "steady", "Ready", ready).await;
    let first = minute_after(s.clock.now());
    move_to(&s.clock, first);
    schedule_where(&s, "steady", "the first run", |sc| {
        last_schedule(sc) == Some(first)
    })
    .await;
    operator.kill().await;

    // As if the status write after the create had been lost in the crash.
    let lost = serde_json::json!({
        "apiVersion": "recac.io/v1alpha1",
        "kind": "AgentTaskSchedule",
        "status": {"lastScheduleTime": null},
    });
    schedules(&s)
        .patch_status(
            "steady",
            &PatchParams::apply("recac-schedule-controller").force(),
            &Patch::Apply(&lost),
        )
        .await
        .expect("status rewound");
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    schedule_where(&s, "steady", "the run adopted after the restart", |sc| {
        last_schedule(sc) == Some(first)
    })
    .await;
    settle().await;
    assert_eq!(
        names_of(&s, "steady").await,
        vec![run_name("steady", first)]
    );
    let (_, metrics) = http_get(operator.http, "/metrics").await;
    assert!(
        metrics.contains("recac_schedule_runs_adopted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("recac_schedule_runs_created_total 0"),
        "{metrics}"
    );
    operator.stop().await;

    // Down for three due times: only the latest runs, once, when the operator is back.
    let down_until = minute_after(minute_after(minute_after(first)));
    move_to(&s.clock, down_until);
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    schedule_where(&s, "steady", "the latest missed run", |sc| {
        last_schedule(sc) == Some(down_until)
    })
    .await;
    event_with(&s, "steady", "MissedRuns", "2 earlier runs were missed").await;
    operator.stop().await;
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    settle().await;
    settle().await;
    assert_eq!(
        names_of(&s, "steady").await,
        vec![run_name("steady", first), run_name("steady", down_until)]
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

fn assert_rejected(out: std::process::Output, case: &str, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{case}: accepted, but should be rejected"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{case}: error lacks {needle:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_schedules_are_rejected_naming_the_field() {
    let s = setup("sc-invalid").await;
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "not cron at all",
            schedule_yaml("words", "every day", "", "succeed"),
            vec![
                "spec.schedule",
                "must be a standard 5-field cron expression",
            ],
        ),
        (
            "minute out of range",
            schedule_yaml("minute", "61 * * * *", "", "succeed"),
            vec![
                "spec.schedule",
                "must be a standard 5-field cron expression",
            ],
        ),
        (
            "a question mark in the minute field",
            schedule_yaml("question", "? * * * *", "", "succeed"),
            vec![
                "spec.schedule",
                "must be a standard 5-field cron expression",
            ],
        ),
        (
            "six fields",
            schedule_yaml("six", "0 * * * * *", "", "succeed"),
            vec!["spec.schedule"],
        ),
        (
            "malformed time zone",
            schedule_yaml("zone", "@daily", "  timeZone: not a zone\n", "succeed"),
            vec!["spec.timeZone", "must be an IANA time zone name"],
        ),
        (
            "history limit above range",
            schedule_yaml(
                "history-high",
                "@daily",
                "  successfulTasksHistoryLimit: 101\n",
                "succeed",
            ),
            vec![
                "spec.successfulTasksHistoryLimit",
                "less than or equal to 100",
            ],
        ),
        (
            "history limit below range",
            schedule_yaml(
                "history-low",
                "@daily",
                "  failedTasksHistoryLimit: -1\n",
                "succeed",
            ),
            vec!["spec.failedTasksHistoryLimit", "greater than or equal to 0"],
        ),
        (
            "unknown concurrency policy",
            schedule_yaml(
                "policy",
                "@daily",
                "  concurrencyPolicy: Sometimes\n",
                "succeed",
            ),
            vec!["spec.concurrencyPolicy", "Unsupported value"],
        ),
        (
            "a template task with nothing to do",
            schedule_yaml("no-work", "@daily", "", "succeed")
                .replace("      prompt: bump the dependencies\n", ""),
            vec![
                "spec.taskTemplate.spec",
                "spec.prompt or spec.ticket is required",
            ],
        ),
        (
            "a name too long for its runs' names",
            schedule_yaml(&"a".repeat(53), "@daily", "", "succeed"),
            vec!["must be at most 52 characters"],
        ),
    ];
    for (case, yaml, needles) in cases {
        let out = kubectl_stdin(
            s.plane,
            &["apply", "--validate=strict", "-n", &s.ns, "-f", "-"],
            &yaml,
        );
        assert_rejected(out, case, &needles);
    }

    // What the schema cannot see, the controller reports, naming the field, and runs nothing.
    let operator = Running::start(s.config.clone(), &s.ns, s.clock.clone()).await;
    for (name, schedule, extra, reason, field) in [
        (
            "backwards",
            "30-10 * * * *",
            "",
            "InvalidSchedule",
            "spec.schedule: minute field \"30-10\": the range 30-10 runs backwards",
        ),
        (
            "mars",
            "* * * * *",
            "  timeZone: Mars/Olympus_Mons\n",
            "InvalidTimeZone",
            "spec.timeZone: \"Mars/Olympus_Mons\" is not a time zone",
        ),
        (
            "never",
            "0 0 30 2 *",
            "",
            "InvalidSchedule",
            "never matches a date",
        ),
    ] {
        let out = kubectl_stdin(
            s.plane,
            &["apply", "--validate=strict", "-n", &s.ns, "-f", "-"],
            &schedule_yaml(name, schedule, extra, "succeed"),
        );
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let found = schedule_where(&s, name, "Ready=False", |sc| {
            condition(sc, "Ready").is_some_and(|c| c.0 == "False")
        })
        .await;
        let (_, got_reason, message) = condition(&found, "Ready").expect("Ready");
        assert_eq!(got_reason, reason, "{name}");
        assert!(message.contains(field), "{name}: {message}");
        event_with(&s, name, reason, field).await;
    }
    s.clock.advance(Duration::from_secs(180));
    settle().await;
    for name in ["backwards", "mars", "never"] {
        assert!(names_of(&s, name).await.is_empty(), "{name} ran");
    }
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test]
async fn the_example_applies_and_kubectl_shows_columns_and_docs() {
    let plane = plane().await;
    let ns = plane.namespace("sc-example").await.expect("namespace");
    let example = repo_root().join("examples/agenttaskschedule.yaml");
    let example = example.to_str().expect("utf-8 path");
    let out = kubectl(
        plane,
        &["apply", "--validate=strict", "-n", &ns, "-f", example],
    );
    assert!(out.status.success(), "apply: {}", text(&out.stderr));
    for resource in ["agenttaskschedules", "ats"] {
        let out = kubectl(plane, &["get", resource, "-n", &ns]);
        assert!(out.status.success(), "get: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let header = stdout.lines().next().unwrap_or_default();
        for column in [
            "NAME",
            "SCHEDULE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE",
        ] {
            assert!(header.contains(column), "no {column} in {header:?}");
        }
        assert!(stdout.contains("weekly-dependency-bumps"), "{stdout}");
    }
    let out = kubectl(plane, &["get", "recac", "-n", &ns]);
    assert!(
        text(&out.stdout).contains("agenttaskschedule.recac.io/weekly-dependency-bumps"),
        "the recac category lists schedules: {}",
        text(&out.stdout)
    );
    let out = kubectl(plane, &["explain", "agenttaskschedule.spec"]);
    assert!(out.status.success(), "explain: {}", text(&out.stderr));
    let explain = text(&out.stdout);
    for field in [
        "schedule",
        "timeZone",
        "suspend",
        "concurrencyPolicy",
        "startingDeadlineSeconds",
        "successfulTasksHistoryLimit",
        "failedTasksHistoryLimit",
        "taskTemplate",
        "IANA time zone",
        "Forbid",
    ] {
        assert!(
            explain.contains(field),
            "explain lacks {field:?}: {explain}"
        );
    }
    let out = kubectl(plane, &["explain", "agenttaskschedule.status"]);
    let explain = text(&out.stdout);
    for field in [
        "lastScheduleTime",
        "lastSuccessfulTime",
        "active",
        "conditions",
    ] {
        assert!(
            explain.contains(field),
            "explain lacks {field:?}: {explain}"
        );
    }
    let out = kubectl(
        plane,
        &[
            "explain",
            "agenttaskschedule.spec.taskTemplate.spec.repository",
        ],
    );
    assert!(
        text(&out.stdout).contains("The git repository the agent clones"),
        "{}",
        text(&out.stdout)
    );
    // Defaults come from the schema.
    let api: Api<AgentTaskSchedule> = Api::namespaced(plane.client().await.expect("client"), &ns);
    let schedule = api.get("weekly-dependency-bumps").await.expect("schedule");
    assert_eq!(schedule.spec.failed_tasks_history_limit, 1);
    // A field that cannot change on a task can change in the template.
    let out = kubectl(
        plane,
        &[
            "patch",
            "ats",
            "weekly-dependency-bumps",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"taskTemplate":{"spec":{"repository":{"url":"https://github.com/example-org/other.git"}}}}}"#,
        ],
    );
    assert!(out.status.success(), "patch: {}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbac_is_enough_for_schedules_and_no_more() {
    let s = setup("sc-rbac").await;
    let config = operator_service_account_config(s.plane).await;
    let client = Client::try_from(config.clone()).expect("client");
    // The ServiceAccount may not touch what the operator never needs: no Secrets, no
    // changes to schedules' specs, no deleting schedules.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &s.ns);
    assert!(secrets.list(&ListParams::default()).await.is_err());

    let operator = Running::start(config, &s.ns, s.clock.clone()).await;
    create_schedule(
        &s,
        &schedule_yaml(
            "least-privilege",
            "* * * * *",
            "  concurrencyPolicy: Replace\n",
            "sleep",
        ),
    )
    .await;
    create_schedule(
        &s,
        &schedule_yaml(
            "short-history",
            "* * * * *",
            "  successfulTasksHistoryLimit: 0\n",
            "succeed",
        ),
    )
    .await;
    schedule_where(&s, "least-privilege", "Ready", ready).await;
    let as_operator: Api<AgentTaskSchedule> = Api::namespaced(client, &s.ns);
    assert!(
        as_operator
            .delete("least-privilege", &Default::default())
            .await
            .is_err(),
        "the operator may not delete schedules"
    );
    let first = minute_after(s.clock.now());
    move_to(&s.clock, first);
    let old = run_name("least-privilege", first);
    task_where(&s, &old, "the first run running", |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;
    let second = minute_after(first);
    move_to(&s.clock, second);
    task_where(
        &s,
        &run_name("least-privilege", second),
        "the replacing run",
        |t| phase(t) == Some(TaskPhase::Running),
    )
    .await;
    wait_for("the replaced task to be gone", LONG, || {
        let (api, old) = (tasks(&s), old.clone());
        async move { api.get_opt(&old).await.ok()?.is_none().then_some(()) }
    })
    .await;
    wait_for("the succeeded runs to be deleted", LONG, || {
        let s = &s;
        async move {
            let names = names_of(s, "short-history").await;
            (names.is_empty()
                && schedules(s)
                    .get("short-history")
                    .await
                    .ok()?
                    .status?
                    .last_successful_time
                    .is_some())
            .then_some(())
        }
    })
    .await;
    event_with(&s, "least-privilege", "Replaced", &old).await;
    let (_, metrics) = http_get(operator.http, "/metrics").await;
    assert!(
        !metrics.contains("recac_schedule_errors_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("recac_schedule_tasks_deleted_total{reason=\"Replaced\"} 1"),
        "{metrics}"
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_run_only_while_leadership_allows_writing() {
    let s = setup("sc-leader").await;
    let (leadership, control) = Leadership::manual(false);
    let operator = Running::start_with(s.config.clone(), &s.ns, s.clock.clone(), leadership).await;
    create_schedule(&s, &schedule_yaml("led", "* * * * *", "", "succeed")).await;
    let first = minute_after(s.clock.now());
    move_to(&s.clock, first);
    settle().await;
    assert!(
        names_of(&s, "led").await.is_empty(),
        "a standby creates nothing"
    );
    let schedule = schedules(&s).get("led").await.expect("schedule");
    assert!(schedule.status.is_none(), "a standby writes no status");
    let (_, health) = http_get(operator.http, "/healthz").await;
    assert!(
        health.contains("component schedule-controller: standby"),
        "{health}"
    );

    control.set(true);
    schedule_where(&s, "led", "the run due while on standby", |sc| {
        last_schedule(sc) == Some(first)
    })
    .await;
    control.set(false);
    let second = minute_after(first);
    move_to(&s.clock, second);
    settle().await;
    assert_eq!(names_of(&s, "led").await, vec![run_name("led", first)]);
    control.set(true);
    schedule_where(&s, "led", "the next term's run", |sc| {
        last_schedule(sc) == Some(second)
    })
    .await;
    assert_eq!(
        names_of(&s, "led").await,
        vec![run_name("led", first), run_name("led", second)]
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}
