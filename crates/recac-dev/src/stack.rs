//! Starting, watching and stopping the parts of `recac dev`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::CustomResourceExt;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use rand::Rng;
use recac_api::{AgentTask, AgentTaskSchedule};
use recac_gitserver::{GitServer, GitServerOptions};
use recac_jira_sim::{IssueSeed, JiraSim};
use recac_testenv::{
    ControlPlane, ControlPlaneOptions, ManagedProcess, NodeAgent, NodeAgentOptions,
};

use crate::config::{self, DevConfig, Model};
use crate::demo;
use crate::model::DemoModel;
use crate::progress::{self, Printer, Row, TaskView, TicketView};
use crate::state::StateDir;
use crate::{DevError, DevOptions};

const CONTROL_PLANE_BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// How the run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The tickets' last lines.
    pub rows: Vec<Row>,
    /// Every ticket finished (what `--once` waits for).
    pub all_finished: bool,
}

/// The parts, declared in the order they are dropped: operators first, the state
/// folder last.
#[derive(Default)]
struct Parts {
    operators: Vec<ManagedProcess>,
    node: Option<NodeAgent>,
    control_plane: Option<ControlPlane>,
    model: Option<DemoModel>,
    sim: Option<JiraSim>,
    git: Option<GitServer>,
    demo_tickets: Vec<String>,
}

impl Parts {
    /// Stops everything in order: the operators (the leader releases its Lease), the node
    /// agent (its pods are reported), the control plane, the servers.
    async fn stop(&mut self) {
        for operator in &mut self.operators {
            operator.stop();
        }
        self.operators.clear();
        if let Some(node) = self.node.take()
            && let Err(e) = node.shutdown().await
        {
            tracing::debug!(error = %e, "node agent shutdown");
        }
        if let Some(plane) = self.control_plane.take() {
            plane.stop();
        }
        self.model = None;
        self.sim = None;
        self.git = None;
    }

    /// The first part that stopped on its own.
    fn dead_part(&mut self) -> Option<DevError> {
        for (i, operator) in self.operators.iter_mut().enumerate() {
            if let Some(status) = operator.exited() {
                return Some(DevError::PartDied {
                    part: format!("operator replica {}", i + 1),
                    status: status.to_string(),
                    log: format!("logs/operator-{}.log", i + 1),
                    tail: whole_lines(&operator.log_tail(TAIL_BYTES)),
                });
            }
        }
        let plane = self.control_plane.as_ref()?;
        let (name, status, tail) = plane.exited_component()?;
        Some(DevError::PartDied {
            log: format!("control-plane/{name}.log"),
            part: name,
            status,
            tail: whole_lines(&tail),
        })
    }
}

/// How much of a dead part's log is shown.
const TAIL_BYTES: usize = 3000;

/// The end of a log cut to whole lines (a tail of [`TAIL_BYTES`] or more starts inside a
/// line); a visible mark when it is empty.
fn whole_lines(tail: &str) -> String {
    let text = match tail.find('\n') {
        Some(i) if tail.len() >= TAIL_BYTES && i + 1 < tail.len() => &tail[i + 1..],
        _ => tail,
    };
    if text.trim().is_empty() {
        "(the log is empty)".into()
    } else {
        text.trim_end().to_string()
    }
}

pub(crate) fn say(line: impl AsRef<str>) {
    println!("recac dev: {}", line.as_ref());
}

fn random_token(prefix: &str) -> String {
    let mut rng = rand::rng();
    let hex: String = (0..24)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect();
    format!("{prefix}{hex}")
}

/// The model from the environment: a real provider when its key is set.
fn model_from_env() -> Model {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty());
    let chosen = std::env::var("RECAC_MODEL").ok().filter(|m| !m.is_empty());
    if set("OPENAI_API_KEY") {
        Model::Provider {
            provider: "openai".into(),
            model: chosen.unwrap_or_else(|| "gpt-4.1".into()),
        }
    } else if set("ANTHROPIC_API_KEY") {
        Model::Provider {
            provider: "anthropic".into(),
            model: chosen.unwrap_or_else(|| "claude-sonnet-4-5".into()),
        }
    } else {
        Model::Demo
    }
}

fn check_port(what: &str, address: SocketAddr) -> Result<(), DevError> {
    TcpListener::bind(address)
        .map(drop)
        .map_err(|source| DevError::port(what, address, source))
}

fn command_works(program: &str, arg: &str) -> Result<(), String> {
    match Command::new(program).arg(arg).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn has_control_plane(folder: &Path) -> bool {
    CONTROL_PLANE_BINARIES
        .iter()
        .all(|name| folder.join(name).is_file())
}

/// Everything that can be found wrong before starting anything.
fn preflight(options: &DevOptions, config: &DevConfig) -> Result<bool, DevError> {
    command_works("git", "--version").map_err(DevError::NoGit)?;
    let simulated = options.jira_url.is_none();
    if simulated {
        let address = config::loopback_address(&config.jira_url).ok_or_else(|| {
            DevError::Config(format!(
                "`jira.url` {:?} is not a loopback http:// address for the simulator (pass --jira-url to use a real Jira)",
                config.jira_url
            ))
        })?;
        check_port("the Jira simulator", address)?;
    }
    check_port("the git server", options.git_address)?;
    if let Some(address) = config.model_address {
        check_port("the demo model", address)?;
    }
    for replica in 0..options.replicas {
        let mut address = config.admin_address;
        address.set_port(address.port() + replica);
        check_port(&format!("operator replica {}", replica + 1), address)?;
    }
    let folder = recac_testenv::binary_folder();
    let build_needed = !has_control_plane(&folder);
    if build_needed && command_works("go", "version").is_err() {
        return Err(DevError::NoGo {
            folder: folder.display().to_string(),
        });
    }
    Ok(build_needed)
}

/// Runs `hack/envtest.sh` with its progress on the terminal.
fn build_control_plane(script: &Path) -> Result<(), DevError> {
    let local = Path::new("hack/envtest.sh");
    let script = if local.is_file() { local } else { script };
    say(format!(
        "building the control plane's binaries with {} (about 10 minutes the first time; cached afterwards)",
        script.display()
    ));
    let status = Command::new("bash")
        .arg(script)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| DevError::Build(format!("cannot run {}: {e}", script.display())))?;
    if !status.success() {
        return Err(DevError::Build(status.to_string()));
    }
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.display().to_string(),
        source,
    }
}

async fn start_git(
    state: &StateDir,
    address: SocketAddr,
    token: &str,
) -> Result<(GitServer, PathBuf), DevError> {
    let root = state.join("git");
    std::fs::create_dir_all(&root).map_err(io_error(&root))?;
    recac_gitserver::create_repository(
        &root,
        demo::REPOSITORY,
        demo::BASE_BRANCH,
        &demo::repository_files(),
        "Greetings, with a test",
    )
    .map_err(|e| DevError::start("the demo repository", e))?;
    let server = GitServer::start(GitServerOptions {
        root,
        token: token.to_string(),
        tls: true,
        address,
    })
    .await
    .map_err(|e| match e {
        recac_gitserver::GitServerError::Bind { address, source } => {
            DevError::port("the git server", address, source)
        }
        other => DevError::start("the git server", other),
    })?;
    let ca = state.join("git-ca.pem");
    std::fs::write(&ca, server.ca_pem().unwrap_or_default()).map_err(io_error(&ca))?;
    Ok((server, ca))
}

async fn start_sim(
    config: &DevConfig,
    repository_url: &str,
) -> Result<(JiraSim, Vec<String>), DevError> {
    let address = config::loopback_address(&config.jira_url)
        .ok_or_else(|| DevError::Config("`jira.url` is not a loopback address".into()))?;
    let seed = demo::sim_seed();
    let sim = JiraSim::bind(address, seed)
        .await
        .map_err(|source| DevError::port("the Jira simulator", address, source))?;
    let label = config
        .trigger_label
        .clone()
        .unwrap_or_else(|| demo::TRIGGER_LABEL.into());
    let keys = demo::tickets(repository_url)
        .into_iter()
        .map(|(ticket, _)| {
            sim.add_issue(IssueSeed {
                labels: vec![label.clone()],
                reporter: Some(demo::REPORTER_EMAIL.into()),
                ..ticket
            })
        })
        .collect();
    Ok((sim, keys))
}

async fn prepare_cluster(
    plane: &ControlPlane,
    config: &DevConfig,
    secret_data: &BTreeMap<String, String>,
    git_ca: &str,
) -> Result<(), DevError> {
    let cluster = |e: &dyn std::fmt::Display| DevError::start("the control plane", e);
    plane
        .install_crds(&[AgentTask::crd(), AgentTaskSchedule::crd()])
        .await
        .map_err(|e| cluster(&e))?;
    let client = plane.client().await.map_err(|e| cluster(&e))?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut names = config.task_namespaces.clone();
    names.push(config.lease_namespace.clone());
    names.sort();
    names.dedup();
    for name in &names {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(cluster(&e)),
        }
    }
    for namespace in &config.task_namespaces {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(config.secret_name.clone()),
                ..Default::default()
            },
            data: Some(
                secret_data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| cluster(&e))?;
        // The git server's CA, where `agent.caBundle` says: the agents trust it through
        // RECAC_CA_BUNDLE, as they would a private CA in a cluster.
        let ca = &config.ca_bundle;
        let metadata = ObjectMeta {
            name: Some(ca.name.clone()),
            ..Default::default()
        };
        let data = BTreeMap::from([(ca.key.clone(), git_ca.to_string())]);
        let created = if ca.secret {
            secrets
                .create(
                    &PostParams::default(),
                    &Secret {
                        metadata,
                        string_data: Some(data),
                        ..Default::default()
                    },
                )
                .await
                .map(drop)
        } else {
            Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .create(
                    &PostParams::default(),
                    &ConfigMap {
                        metadata,
                        data: Some(data),
                        ..Default::default()
                    },
                )
                .await
                .map(drop)
        };
        created.map_err(|e| cluster(&e))?;
    }
    Ok(())
}

fn start_operators(
    options: &DevOptions,
    state: &StateDir,
    config: &DevConfig,
    config_path: &Path,
    kubeconfig: &Path,
    simulated: bool,
) -> Result<Vec<ManagedProcess>, DevError> {
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs).map_err(io_error(&logs))?;
    let mut operators = Vec::new();
    for replica in 1..=options.replicas {
        let mut admin = config.admin_address;
        admin.set_port(admin.port() + replica - 1);
        let mut command = Command::new(&options.recac_binary);
        command
            .args(["orchestrate", "--config"])
            .arg(config_path)
            .args(["--admin-address", &admin.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", format!("recac-dev-{replica}"))
            .env("POD_NAMESPACE", &config.lease_namespace)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        if simulated {
            command
                .env("JIRA_EMAIL", recac_jira_sim::BOT_EMAIL)
                .env("JIRA_API_TOKEN", recac_jira_sim::BOT_TOKEN);
        }
        let log = logs.join(format!("operator-{replica}.log"));
        let process = ManagedProcess::spawn_command(
            &format!("operator replica {replica}"),
            command,
            &log,
            false,
        )
        .map_err(|e| DevError::start(&format!("operator replica {replica}"), e))?;
        operators.push(process);
    }
    Ok(operators)
}

fn check_config(options: &DevOptions, path: &Path) -> Result<(), DevError> {
    let out = Command::new(&options.recac_binary)
        .args(["orchestrate", "--check-config", "--config"])
        .arg(path)
        .output()
        .map_err(|e| {
            DevError::start(
                "the operator",
                format!("cannot run {}: {e}", options.recac_binary.display()),
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DevError::Config(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

pub(crate) async fn task_views(client: &kube::Client, namespaces: &[String]) -> Vec<TaskView> {
    let mut views = Vec::new();
    for namespace in namespaces {
        let api: Api<AgentTask> = Api::namespaced(client.clone(), namespace);
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        let mut tasks = list.items;
        tasks.sort_by_key(|t| t.metadata.creation_timestamp.clone());
        for task in tasks {
            let status = task.status.clone().unwrap_or_default();
            views.push(TaskView {
                name: task.metadata.name.clone().unwrap_or_default(),
                ticket: task
                    .spec
                    .ticket
                    .as_ref()
                    .map(|t| t.key.clone())
                    .unwrap_or_default(),
                phase: status
                    .phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "-".into()),
                attempt: status.attempt,
                job: status.job_name,
                branch: status.branch,
                reported: status.feedback.map(|f| f.reported).unwrap_or_default(),
            });
        }
    }
    views
}

pub(crate) fn ticket_views(sim: Option<&JiraSim>, keys: &[String]) -> Vec<TicketView> {
    let Some(sim) = sim else {
        return Vec::new();
    };
    keys.iter()
        .filter_map(|key| sim.issue(key))
        .map(|issue| TicketView {
            key: issue.key,
            status: issue.status,
            labels: issue.labels,
            comments: issue.comments.len(),
        })
        .collect()
}

fn print_commands(
    options: &DevOptions,
    state: &StateDir,
    config: &DevConfig,
    kubeconfig: &Path,
    git: &GitServer,
    sim: Option<&JiraSim>,
    model: &Model,
) {
    let kubectl = recac_testenv::binary_folder().join("kubectl");
    let kubectl = if kubectl.is_file() {
        kubectl.display().to_string()
    } else {
        "kubectl".into()
    };
    let namespace = config.task_namespaces.first().cloned().unwrap_or_default();
    say(format!(
        "state folder: {}{}",
        state.path().display(),
        if state.kept() {
            " (kept after the run)"
        } else {
            " (removed on exit; --keep keeps it)"
        }
    ));
    match model {
        Model::Demo => say(format!(
            "model: the DEMO model at http://{} (scripted, not an LLM; set OPENAI_API_KEY or ANTHROPIC_API_KEY for a real one)",
            config
                .model_address
                .map(|a| a.to_string())
                .unwrap_or_default()
        )),
        Model::Provider { provider, model } => say(format!("model: {provider} {model}")),
    }
    match sim {
        Some(sim) => say(format!(
            "Jira simulator: {}/browse/{}-1 (REST: {}/rest/api/3/search/jql?jql=project%3D{})",
            sim.url(),
            demo::PROJECT,
            sim.url(),
            demo::PROJECT
        )),
        None => say(format!("Jira: {}", config.jira_url)),
    }
    say(format!(
        "{} operator replica(s), logs in {}",
        options.replicas,
        state.join("logs").display()
    ));
    say("look closer:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  {kubectl} get at -n {namespace} -w");
    println!("  {kubectl} get jobs,pods -n {namespace}");
    println!(
        "  git --git-dir {} log --all --oneline   # the demo repository ({}/{})",
        state.join("git").join(demo::REPOSITORY).display(),
        git.url(),
        demo::REPOSITORY
    );
}

/// Runs `recac dev` until Ctrl-C, SIGTERM, a part dying or, with `once`, every ticket
/// finishing. Everything it started is stopped before it returns.
pub async fn run(options: DevOptions) -> Result<Outcome, DevError> {
    if options.real_node {
        return crate::realnode::run(&options).await;
    }
    let begun = Instant::now();
    let model = model_from_env();
    let text = match &options.config {
        Some(path) => std::fs::read_to_string(path).map_err(io_error(path))?,
        None => config::BUILT_IN.to_string(),
    };
    let config = config::prepare(&text, options.jira_url.as_deref(), &model)?;
    let build_needed = preflight(&options, &config)?;
    let (state, notice) = StateDir::claim(&options.state_dir, options.keep)?;
    if let Some(notice) = notice {
        say(notice);
    }
    let config_path = state.join("config.yaml");
    std::fs::write(&config_path, &config.text).map_err(io_error(&config_path))?;
    check_config(&options, &config_path)?;
    if build_needed {
        build_control_plane(&options.envtest_script)?;
    }

    let mut signals = Signals::new()?;
    let mut parts = Parts::default();
    let started = tokio::select! {
        started = start_all(&options, &state, &config, &config_path, &model, &mut parts) => started,
        signal = signals.recv() => {
            say(format!("{signal} while starting"));
            Err(DevError::StoppedWhileStarting)
        }
    };
    let outcome = match started {
        Ok(client) => {
            say(format!(
                "everything started in {:.0} s",
                begun.elapsed().as_secs_f64()
            ));
            watch(&options, &state, &config, &client, &mut parts, &mut signals).await
        }
        Err(e) => Err(e),
    };
    say("stopping");
    parts.stop().await;
    drop(state);
    outcome
}

async fn start_all(
    options: &DevOptions,
    state: &StateDir,
    config: &DevConfig,
    config_path: &Path,
    model: &Model,
    parts: &mut Parts,
) -> Result<kube::Client, DevError> {
    let git_token = random_token("git-");
    let (git, ca) = start_git(state, options.git_address, &git_token).await?;
    let repository_url = format!("{}/{}", git.url(), demo::REPOSITORY);
    say(format!("git server: {repository_url}"));
    parts.git = Some(git);

    if options.jira_url.is_none() {
        let (sim, keys) = start_sim(config, &repository_url).await?;
        say(format!(
            "Jira simulator: {} with tickets {}",
            sim.url(),
            keys.join(", ")
        ));
        parts.sim = Some(sim);
        parts.demo_tickets = keys;
    }

    let mut secret_data = BTreeMap::from([("RECAC_GIT_TOKEN".to_string(), git_token)]);
    match model {
        Model::Demo => {
            let key = random_token("demo-");
            let address = config
                .model_address
                .ok_or_else(|| DevError::Config("the demo model has no address".into()))?;
            parts.model = Some(DemoModel::start(address, &key).await?);
            secret_data.insert("OPENAI_API_KEY".into(), key);
        }
        Model::Provider { .. } => {
            for name in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"] {
                if let Ok(value) = std::env::var(name)
                    && !value.is_empty()
                {
                    secret_data.insert(name.into(), value);
                }
            }
        }
    }

    say("starting the control plane (etcd, kube-apiserver, kube-controller-manager)");
    let plane = ControlPlane::start(ControlPlaneOptions {
        controller_manager: true,
        folder: Some(state.join("control-plane")),
        keep_folder: state.kept(),
    })
    .await
    .map_err(|e| DevError::start("the control plane", e))?;
    let git_ca = std::fs::read_to_string(&ca).map_err(io_error(&ca))?;
    prepare_cluster(&plane, config, &secret_data, &git_ca).await?;
    let kubeconfig = plane.kubeconfig_path().to_path_buf();
    let client = plane
        .client()
        .await
        .map_err(|e| DevError::start("the control plane", e))?;
    parts.control_plane = Some(plane);

    let binary_dir = options
        .recac_binary
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = format!(
        "{}:{}",
        binary_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let node_dir = state.join("node");
    std::fs::create_dir_all(&node_dir).map_err(io_error(&node_dir))?;
    let node = NodeAgent::start(
        client.clone(),
        NodeAgentOptions {
            node_name: Some("recac-dev-node".into()),
            namespaces: config.task_namespaces.clone(),
            work_dir: Some(node_dir),
            node_env: vec![("PATH".into(), path)],
            ..Default::default()
        },
    )
    .await
    .map_err(|e| DevError::start("the node agent", e))?;
    parts.node = Some(node);

    parts.operators = start_operators(
        options,
        state,
        config,
        config_path,
        &kubeconfig,
        options.jira_url.is_none(),
    )?;
    print_commands(
        options,
        state,
        config,
        &kubeconfig,
        parts
            .git
            .as_ref()
            .ok_or_else(|| DevError::start("the git server", "gone"))?,
        parts.sim.as_ref(),
        model,
    );
    Ok(client)
}

/// Ctrl-C and SIGTERM.
pub(crate) struct Signals {
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Self, DevError> {
        let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| DevError::start("the signal handler", e))?;
        Ok(Self { terminate })
    }

    /// Waits for the next signal and names it.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = self.terminate.recv() => "terminated",
        }
    }
}

async fn watch(
    options: &DevOptions,
    state: &StateDir,
    config: &DevConfig,
    client: &kube::Client,
    parts: &mut Parts,
    signals: &mut Signals,
) -> Result<Outcome, DevError> {
    let mut printer = Printer::new(options.tty);
    let mut stdout = std::io::stdout();
    let started = Instant::now();
    say(if options.once {
        "running until every ticket has finished"
    } else {
        "running; Ctrl-C stops everything"
    });
    let mut rows: Vec<Row> = Vec::new();
    loop {
        tokio::select! {
            signal = signals.recv() => {
                printer.release();
                say(signal);
                return finish(options, rows, true);
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Some(dead) = parts.dead_part() {
            printer.release();
            return Err(dead);
        }
        let tasks = task_views(client, &config.task_namespaces).await;
        let tickets = ticket_views(parts.sim.as_ref(), &parts.demo_tickets);
        rows = progress::rows(&tickets, &tasks);
        let _ = printer.show(&mut stdout, &rows);
        let all_finished = !rows.is_empty() && rows.iter().all(|r| r.finished);
        if options.once && all_finished {
            printer.release();
            say(format!(
                "every ticket finished in {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            return finish(options, rows, false);
        }
        if options.once && started.elapsed() > options.timeout {
            printer.release();
            return Err(DevError::Timeout {
                seconds: options.timeout.as_secs(),
                state: state.path().display().to_string(),
                table: progress::table(&rows).join("\n"),
            });
        }
    }
}

pub(crate) fn finish(
    options: &DevOptions,
    rows: Vec<Row>,
    interrupted: bool,
) -> Result<Outcome, DevError> {
    for line in rows.iter().map(progress::plain_line) {
        say(format!("result: {line}"));
    }
    let all_finished = !rows.is_empty() && rows.iter().all(|r| r.finished);
    if options.once && interrupted {
        return Err(DevError::Interrupted);
    }
    Ok(Outcome { rows, all_finished })
}
