//! The demo loop on a real node: what `make e2e` checks and `recac dev --real-node` shows.
//!
//! `hack/realnode-up.sh --run` starts a control plane, containerd and a kubelet on this
//! machine and exports where they are ([`Node::from_env`]). On that node:
//! - the git server (with its own CA), the Jira simulator with the demo tickets and the
//!   demo model listen on the node's address, which pods reach ([`Demo::start`]);
//! - the task namespace enforces the restricted Pod Security Standard and holds the agents'
//!   Secret and the git server's CA as a ConfigMap (`agent.caBundle`), the operator's
//!   namespace its Jira credentials ([`Demo::install_prerequisites`]);
//! - the operator is deployed from the built image as the README deploys it, with
//!   `kubectl apply -k` of a kustomize overlay of `config/default` ([`deploy_with_kustomize`])
//!   or with the Helm chart ([`deploy_with_helm`]).
//!
//! Both callers use these same steps, so what a person watches with `--real-node` is what
//! the e2e asserts.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use recac_gitserver::{GitServer, GitServerOptions};
use recac_jira_sim::{IssueSeed, JiraSim};

use crate::demo::{self, Expected};
use crate::model::DemoModel;
use crate::progress::{self, Printer};
use crate::stack::{Outcome, Signals, finish, say, task_views, ticket_views};
use crate::state::StateDir;
use crate::{DevError, DevOptions};

/// The operator's namespace.
pub const SYSTEM: &str = "recac-system";
/// The namespace of the demo tasks, labelled to enforce the restricted Pod Security Standard.
pub const TASKS: &str = "recac-demo";
/// The agents' Secret (git token, model key) in [`TASKS`].
pub const AGENT_SECRET: &str = "recac-demo-credentials";
/// The git server's CA in [`TASKS`] (key `ca.crt`), named by `agent.caBundle`.
pub const CA_CONFIG_MAP: &str = "recac-demo-ca";
/// How long the operator's rollout may take.
const ROLLOUT_TIMEOUT: &str = "180s";

/// The repository's root (kustomize bases, the chart, the hack scripts).
pub fn repo_root() -> PathBuf {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    path.canonicalize().unwrap_or(path)
}

/// The node `hack/realnode-up.sh --run` started, from what it exports.
#[derive(Clone, Debug)]
pub struct Node {
    /// The node's address: host services bound to it are reachable from pods.
    pub ip: IpAddr,
    /// What in-cluster clients use for the apiserver (there is no kube-proxy, so the
    /// `kubernetes` Service's address leads nowhere).
    pub apiserver_host: String,
    pub apiserver_port: String,
    pub kubectl: PathBuf,
    /// The imported image's tag (never pulled: `imagePullPolicy: Never`).
    pub image: String,
}

impl Node {
    /// `None` outside `hack/realnode-up.sh --run`.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Self {
            ip: var("REALNODE_NODE_IP")?.parse().ok()?,
            apiserver_host: var("REALNODE_APISERVER_HOST")?,
            apiserver_port: var("REALNODE_APISERVER_PORT")?,
            kubectl: var("REALNODE_KUBECTL")?.into(),
            image: var("REALNODE_IMAGE")?,
        })
    }

    /// Runs kubectl (the harness's KUBECONFIG) with `stdin` as its input.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, DevError> {
        run_with_input(&self.kubectl, args, stdin)
    }

    /// Runs kubectl; its stdout, or an error with both outputs when it fails.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String, DevError> {
        let out = self.kubectl(args, stdin)?;
        checked("kubectl", args, out)
    }

    /// The image's repository and tag.
    fn image_parts(&self) -> (&str, &str) {
        self.image
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .unwrap_or((&self.image, "latest"))
    }
}

fn run_with_input(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output, DevError> {
    let what = program.display().to_string();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DevError::start(&what, format!("cannot run it: {e}")))?;
    let mut pipe = child.stdin.take();
    if let (Some(input), Some(pipe)) = (stdin, pipe.as_mut()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| DevError::start(&what, format!("writing its input: {e}")))?;
    }
    drop(pipe);
    child
        .wait_with_output()
        .map_err(|e| DevError::start(&what, e))
}

fn checked(what: &str, args: &[&str], out: Output) -> Result<String, DevError> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    Err(DevError::start(
        what,
        format!(
            "`{what} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The services the pods reach through the node's address, and the demo tickets.
pub struct Demo {
    pub sim: JiraSim,
    pub git: GitServer,
    pub model: DemoModel,
    /// The git server's repositories (the demo repository is [`demo::REPOSITORY`]).
    pub git_root: PathBuf,
    pub repository_url: String,
    /// The demo tickets' keys, in creation order, with how each should end.
    pub tickets: Vec<(String, Expected)>,
    git_token: String,
    model_key: String,
}

impl Demo {
    /// Starts the git server (TLS, its own CA), the demo model and the Jira simulator with
    /// the demo tickets, each on the node's address; `work` holds the repositories.
    pub async fn start(node: &Node, work: &Path) -> Result<Self, DevError> {
        let suffix = format!("{}-{}", std::process::id(), random_suffix());
        let git_token = format!("demo-git-{suffix}");
        let git_root = work.join("git");
        std::fs::create_dir_all(&git_root).map_err(|source| DevError::Io {
            path: git_root.display().to_string(),
            source,
        })?;
        recac_gitserver::create_repository(
            &git_root,
            demo::REPOSITORY,
            demo::BASE_BRANCH,
            &demo::repository_files(),
            "Greetings, with a test",
        )
        .map_err(|e| DevError::start("the demo repository", e))?;
        let git = GitServer::start(GitServerOptions {
            root: git_root.clone(),
            token: git_token.clone(),
            tls: true,
            address: SocketAddr::new(node.ip, 0),
        })
        .await
        .map_err(|e| DevError::start("the git server", e))?;
        let repository_url = format!("{}/{}", git.url(), demo::REPOSITORY);
        let model_key = format!("demo-model-{suffix}");
        let model = DemoModel::start(SocketAddr::new(node.ip, 0), &model_key).await?;
        let sim = JiraSim::bind(SocketAddr::new(node.ip, 0), demo::sim_seed())
            .await
            .map_err(|e| DevError::start("the Jira simulator", e))?;
        let mut demo = Self {
            sim,
            git,
            model,
            git_root,
            repository_url,
            tickets: Vec::new(),
            git_token,
            model_key,
        };
        for (ticket, expected) in demo::tickets(&demo.repository_url) {
            let key = demo.add_ticket(ticket);
            demo.tickets.push((key, expected));
        }
        Ok(demo)
    }

    /// Adds a ticket to the simulator as the demo's reporter, with the trigger label.
    pub fn add_ticket(&self, ticket: IssueSeed) -> String {
        let mut labels = ticket.labels.clone();
        if !labels.iter().any(|l| l == demo::TRIGGER_LABEL) {
            labels.push(demo::TRIGGER_LABEL.into());
        }
        self.sim.add_issue(IssueSeed {
            project: demo::PROJECT.into(),
            reporter: Some(demo::REPORTER_EMAIL.into()),
            labels,
            ..ticket
        })
    }

    /// The namespaces (restricted), the agents' Secret and the git server's CA in
    /// [`TASKS`], the operator's Jira credentials (the Secret `recac-jira`, as the README's
    /// deployment steps create it) in [`SYSTEM`].
    pub fn install_prerequisites(&self, node: &Node) -> Result<(), DevError> {
        node.kubectl_ok(&["apply", "-f", "-"], Some(&restricted_namespaces()))?;
        node.kubectl_ok(&["apply", "-f", "-"], Some(&self.ca_config_map()?))?;
        let agent_secret = secret_manifest(
            AGENT_SECRET,
            TASKS,
            &[
                ("RECAC_GIT_TOKEN", &self.git_token),
                ("OPENAI_API_KEY", &self.model_key),
            ],
        );
        node.kubectl_ok(&["apply", "-f", "-"], Some(&agent_secret))?;
        self.create_jira_secret(node)
    }

    /// The Secret `recac-jira` in [`SYSTEM`] with the simulator's bot credentials.
    pub fn create_jira_secret(&self, node: &Node) -> Result<(), DevError> {
        let secret = secret_manifest(
            "recac-jira",
            SYSTEM,
            &[
                ("email", recac_jira_sim::BOT_EMAIL),
                ("token", recac_jira_sim::BOT_TOKEN),
            ],
        );
        node.kubectl_ok(&["apply", "-f", "-"], Some(&secret))
            .map(drop)
    }

    fn ca_config_map(&self) -> Result<String, DevError> {
        let pem = self
            .git
            .ca_pem()
            .ok_or_else(|| DevError::start("the git server", "it serves no TLS"))?;
        let config_map = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CA_CONFIG_MAP, "namespace": TASKS},
            "data": {"ca.crt": pem},
        });
        Ok(config_map.to_string())
    }

    /// The operator's configuration: the simulator, the git server and the model on the
    /// node's address, the agents from the built image with the git server's CA.
    /// The operator's configuration for this node. With `egress_proxy` (the proxy's URL as
    /// agent pods reach it) agents run behind the egress allow-list; without, `open`.
    pub fn operator_config(&self, node: &Node, egress_proxy: Option<&str>) -> String {
        let egress = match egress_proxy {
            Some(proxy) => format!(
                "  egress:\n    mode: allowList\n    proxy: {proxy}\n    proxyPods: {{namespace: {SYSTEM}}}\n"
            ),
            None => "  egress: {mode: open}\n".to_string(),
        };
        format!(
            r#"operator:
  namespaces: [{TASKS}]
  adminAddress: 0.0.0.0:8080
  leaderElection:
    leaseDurationSeconds: 6
    renewDeadlineSeconds: 4
    retryPeriodSeconds: 1
taskController:
  maxConcurrentTasks: 2
  retryBackoffSeconds: 2
agent:
  image: {image}
  imagePullPolicy: Never
  provider: openai
  model: {model_name}
  secretRefs: [{AGENT_SECRET}]
  gitCredentialHosts: ["{git}"]
  caBundle: {{configMap: {CA_CONFIG_MAP}}}
  resources:
    requests: {{cpu: 100m, memory: 128Mi}}
    limits: {{memory: 512Mi}}
  env:
    - name: OPENAI_BASE_URL
      value: http://{model}/v1
  ttlSecondsAfterFinished: 3600
{egress}jira:
  url: {jira}
  allowInsecureHttp: true
sources:
  - name: demo
    project: {project}
    label: {label}
    namespace: {TASKS}
    template: {{maxRetries: 2, timeoutSeconds: 600}}
    repository:
      fromDescription: true
    claim: {{transition: In Progress, assign: true}}
    pollIntervalSeconds: 2
feedback:
  commentOnRetry: true
  retrySeconds: 1
  succeeded: {{transition: In Review}}
  failed: {{transition: To Do}}
"#,
            image = node.image,
            model_name = crate::model::MODEL_NAME,
            git = self.git.address(),
            model = self.model.address(),
            jira = self.sim.url(),
            project = demo::PROJECT,
            label = demo::TRIGGER_LABEL,
        )
    }
}

/// A Secret as JSON for `kubectl apply -f -`: the values go through kubectl's input, never
/// its command line (which any process can read) or an error message.
fn secret_manifest(name: &str, namespace: &str, data: &[(&str, &str)]) -> String {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": data,
    })
    .to_string()
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..12)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

fn restricted_namespaces() -> String {
    [TASKS, SYSTEM]
        .iter()
        .map(|name| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A kustomize overlay of `config/default` in `dir` (inside the repository: kustomize takes
/// bases by relative path only): the built image (never pulled), `config`, and the
/// apiserver's address for in-cluster clients.
pub fn write_overlay(dir: &Path, node: &Node, config: &str) -> Result<(), DevError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| DevError::Io { path, source }
    };
    let head = kustomization_head(&relative_base(dir, "config/default")?, node);
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config).map_err(io(&config_path))?;
    let egress = egress_patch(node);
    let kustomization = format!(
        r#"{head}configMapGenerator:
  - name: recac-config
    namespace: {SYSTEM}
    behavior: replace
    files:
      - config.yaml
patches:
  - target: {{kind: Deployment, name: recac-orchestrator}}
    patch: |
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: recac-orchestrator
        namespace: {SYSTEM}
      spec:
        template:
          spec:
            containers:
              - name: operator
                imagePullPolicy: Never
                env:
                  - name: KUBERNETES_SERVICE_HOST
                    value: "{host}"
                  - name: KUBERNETES_SERVICE_PORT
                    value: "{port}"
                  - name: RUST_LOG
                    value: info,recac=debug
{egress}"#,
        host = node.apiserver_host,
        port = node.apiserver_port,
    );
    let path = dir.join("kustomization.yaml");
    std::fs::write(&path, kustomization).map_err(io(&path))
}

/// An overlay's first lines: `base`, and the built image in place of the published one.
fn kustomization_head(base: &str, node: &Node) -> String {
    let (name, tag) = node.image_parts();
    format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
images:
  - name: ghcr.io/recac-io/recac
    newName: {name}
    newTag: "{tag}"
"#
    )
}

/// The patch that runs the egress proxy on this node: the built image (never pulled), one
/// replica, and the apiserver's address for its in-cluster client (the node has no
/// kube-proxy).
fn egress_patch(node: &Node) -> String {
    format!(
        r#"  - target: {{kind: Deployment, name: recac-egress}}
    patch: |
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: recac-egress
        namespace: {SYSTEM}
      spec:
        replicas: 1
        template:
          spec:
            containers:
              - name: proxy
                imagePullPolicy: Never
                env:
                  - name: KUBERNETES_SERVICE_HOST
                    value: "{host}"
                  - name: KUBERNETES_SERVICE_PORT
                    value: "{port}"
"#,
        host = node.apiserver_host,
        port = node.apiserver_port,
    )
}

/// The egress proxy alone (`config/egress`, from an overlay in `dir`/egress-proxy), rolled
/// out before the operator: the node has neither cluster DNS nor kube-proxy, so agent pods
/// reach the proxy by its pod's address, which the operator's configuration must name.
/// Returns that URL.
pub fn deploy_egress_proxy(node: &Node, dir: &Path) -> Result<String, DevError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| DevError::Io { path, source }
    };
    let overlay = dir.join("egress-proxy");
    std::fs::create_dir_all(&overlay).map_err(io(&overlay))?;
    let kustomization = format!(
        "{}patches:\n{}",
        kustomization_head(&relative_base(&overlay, "config/egress")?, node),
        egress_patch(node)
    );
    let path = overlay.join("kustomization.yaml");
    std::fs::write(&path, kustomization).map_err(io(&path))?;
    node.kubectl_ok(&["apply", "-f", "-"], Some(&restricted_namespaces()))?;
    node.kubectl_ok(&["apply", "-k", &overlay.display().to_string()], None)?;
    let timeout = format!("--timeout={ROLLOUT_TIMEOUT}");
    let rollout = node.kubectl(
        &[
            "rollout",
            "status",
            "deployment/recac-egress",
            "-n",
            SYSTEM,
            &timeout,
        ],
        None,
    )?;
    if !rollout.status.success() {
        let pods = node.kubectl(&["describe", "pods", "-n", SYSTEM], None)?;
        return Err(DevError::start(
            "the egress proxy",
            format!(
                "its Deployment did not roll out: {}\n{}",
                String::from_utf8_lossy(&rollout.stderr),
                String::from_utf8_lossy(&pods.stdout)
            ),
        ));
    }
    let address = node.kubectl_ok(
        &[
            "get",
            "pods",
            "-n",
            SYSTEM,
            "-l",
            "app.kubernetes.io/name=recac-egress",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ],
        None,
    )?;
    let address = address.trim();
    if address.is_empty() {
        return Err(DevError::start(
            "the egress proxy",
            "its pod has no address".to_string(),
        ));
    }
    Ok(format!("http://{address}:3128"))
}

/// The path from `dir` (inside the repository) to the repository's `target` folder, as
/// kustomize takes bases: relative only.
fn relative_base(dir: &Path, target: &str) -> Result<String, DevError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| DevError::Io { path, source }
    };
    let root = repo_root().canonicalize().map_err(io(&repo_root()))?;
    let below = dir
        .canonicalize()
        .map_err(io(dir))?
        .strip_prefix(&root)
        .map_err(|_| {
            DevError::Config(format!(
                "the overlay folder {} is not inside the repository {}",
                dir.display(),
                root.display()
            ))
        })?
        .components()
        .count();
    Ok(format!("{}{target}", "../".repeat(below)))
}

/// `kubectl apply -k overlay`, then waits for the Deployment's rollout; how long it took.
/// A rollout that fails comes with the pods' description and the operator's logs.
pub fn deploy_with_kustomize(node: &Node, overlay: &Path) -> Result<Duration, DevError> {
    let begun = Instant::now();
    node.kubectl_ok(&["apply", "-k", &overlay.display().to_string()], None)?;
    wait_for_rollout(node)?;
    Ok(begun.elapsed())
}

/// `kubectl delete -k overlay`, waiting until every object (the namespace and the CRDs
/// with them) is gone; how long it took.
pub fn remove_kustomize(node: &Node, overlay: &Path) -> Result<Duration, DevError> {
    let begun = Instant::now();
    node.kubectl_ok(
        &[
            "delete",
            "-k",
            &overlay.display().to_string(),
            "--wait=true",
            "--timeout=180s",
        ],
        None,
    )?;
    Ok(begun.elapsed())
}

/// The chart's values for this node: the built image (never pulled), `config` as the
/// operator's configuration, the simulator's bot as the Jira credentials (the chart makes
/// the Secret), and the apiserver's address for in-cluster clients.
pub fn helm_values(node: &Node, config: &str) -> String {
    let (repository, tag) = node.image_parts();
    let config: String = config.lines().map(|line| format!("  {line}\n")).collect();
    format!(
        r#"namespace:
  create: false
image:
  repository: {repository}
  tag: "{tag}"
  pullPolicy: Never
logLevel: info,recac=debug
egress:
  replicas: 1
jira:
  email: {email}
  token: {token}
extraEnv:
  - name: KUBERNETES_SERVICE_HOST
    value: "{host}"
  - name: KUBERNETES_SERVICE_PORT
    value: "{port}"
config:
{config}"#,
        email = recac_jira_sim::BOT_EMAIL,
        token = recac_jira_sim::BOT_TOKEN,
        host = node.apiserver_host,
        port = node.apiserver_port,
    )
}

/// `helm install recac charts/recac` into [`SYSTEM`] (created first, labelled restricted)
/// with [`helm_values`] written to `work`, then waits for the rollout; how long it took.
pub fn deploy_with_helm(
    node: &Node,
    helm: &Path,
    work: &Path,
    config: &str,
) -> Result<Duration, DevError> {
    let begun = Instant::now();
    let values = work.join("helm-values.yaml");
    std::fs::write(&values, helm_values(node, config)).map_err(|source| DevError::Io {
        path: values.display().to_string(),
        source,
    })?;
    node.kubectl_ok(&["apply", "-f", "-"], Some(&restricted_namespaces()))?;
    let chart = repo_root().join("charts/recac");
    let args = [
        "install",
        "recac",
        &chart.display().to_string(),
        "--namespace",
        SYSTEM,
        "--values",
        &values.display().to_string(),
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_with_input(helm, &args, None)?;
    checked("helm", &args, out)?;
    wait_for_rollout(node)?;
    Ok(begun.elapsed())
}

fn wait_for_rollout(node: &Node) -> Result<(), DevError> {
    let timeout = format!("--timeout={ROLLOUT_TIMEOUT}");
    let rollout = node.kubectl(
        &[
            "rollout",
            "status",
            "deployment/recac-orchestrator",
            "-n",
            SYSTEM,
            &timeout,
        ],
        None,
    )?;
    if rollout.status.success() {
        return Ok(());
    }
    let pods = node.kubectl(&["describe", "pods", "-n", SYSTEM], None)?;
    let logs = node.kubectl(
        &[
            "logs",
            "-n",
            SYSTEM,
            "-l",
            "app.kubernetes.io/name=recac",
            "--tail=50",
        ],
        None,
    )?;
    Err(DevError::start(
        "the operator",
        format!(
            "its Deployment did not roll out: {}\n{}\n{}",
            String::from_utf8_lossy(&rollout.stderr),
            String::from_utf8_lossy(&pods.stdout),
            String::from_utf8_lossy(&logs.stdout)
        ),
    ))
}

/// `recac dev --real-node` inside `hack/realnode-up.sh --run`: the demo services, the
/// operator deployed with `kubectl apply -k`, then one line per ticket until Ctrl-C,
/// SIGTERM or, with `once`, every ticket finishing. The harness removes the node after.
pub async fn run(options: &DevOptions) -> Result<Outcome, DevError> {
    let node = Node::from_env().ok_or_else(|| {
        DevError::Config(
            "--real-node runs on the node hack/realnode-up.sh starts (REALNODE_* are not set): run `recac dev --real-node` from the repository as root, or `make dev-real-node`".into(),
        )
    })?;
    if options.config.is_some() || options.jira_url.is_some() {
        return Err(DevError::Config(
            "--real-node runs the demo configuration against the Jira simulator: --config and --jira-url do not apply".into(),
        ));
    }
    let begun = Instant::now();
    let (state, notice) = StateDir::claim(&options.state_dir, options.keep)?;
    if let Some(notice) = notice {
        say(notice);
    }
    let demo = Demo::start(&node, state.path()).await?;
    say(format!(
        "git server {}, Jira simulator {} with tickets {}, demo model {}, all on the node's address",
        demo.repository_url,
        demo.sim.url(),
        demo.tickets
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        demo.model.address()
    ));
    demo.install_prerequisites(&node)?;
    let overlay = Overlay::create()?;
    write_overlay(overlay.path(), &node, &demo.operator_config(&node, None))?;
    say(format!(
        "deploying the operator from {} with `kubectl apply -k {}`",
        node.image,
        overlay.path().display()
    ));
    let rolled = deploy_with_kustomize(&node, overlay.path())?;
    say(format!(
        "the operator rolled out in {:.1} s; everything started in {:.0} s",
        rolled.as_secs_f64(),
        begun.elapsed().as_secs_f64()
    ));
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    println!("\nTry, in another shell:");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  {} get node -o wide", node.kubectl.display());
    println!("  kubectl get at,jobs,pods -n {TASKS} -o wide -w");
    println!("  kubectl logs -n {SYSTEM} -l app.kubernetes.io/name=recac -f");
    println!("  kubectl get lease recac-operator -n {SYSTEM}");
    let client = kube::Client::try_default()
        .await
        .map_err(|e| DevError::start("the node's apiserver", e))?;
    let mut signals = Signals::new()?;
    let mut printer = Printer::new(options.tty);
    let mut stdout = std::io::stdout();
    let keys: Vec<String> = demo.tickets.iter().map(|(k, _)| k.clone()).collect();
    let namespaces = [TASKS.to_string()];
    let started = Instant::now();
    say(if options.once {
        "running until every ticket has finished"
    } else {
        "running; Ctrl-C stops everything and removes the node"
    });
    let mut rows = Vec::new();
    loop {
        tokio::select! {
            signal = signals.recv() => {
                printer.release();
                say(signal);
                return finish(options, rows, true);
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let tasks = task_views(&client, &namespaces).await;
        let tickets = ticket_views(Some(&demo.sim), &keys);
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

/// The overlay's folder under the repository's `target/` (kustomize reads bases by
/// relative path), removed when dropped.
struct Overlay(PathBuf);

impl Overlay {
    fn create() -> Result<Self, DevError> {
        let path = repo_root()
            .join("target")
            .join(format!("dev-real-node-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| DevError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(image: &str) -> Node {
        Node {
            ip: "10.99.0.1".parse().unwrap(),
            apiserver_host: "10.99.0.1".into(),
            apiserver_port: "6443".into(),
            kubectl: "kubectl".into(),
            image: image.into(),
        }
    }

    #[tokio::test]
    async fn outside_a_real_node_it_says_how_to_start_one() {
        if Node::from_env().is_some() {
            return;
        }
        let mut options = DevOptions::new("recac".into());
        options.real_node = true;
        let error = run(&options).await.expect_err("no node").to_string();
        assert!(error.contains("make dev-real-node"), "{error}");
    }

    #[test]
    fn an_image_is_split_into_repository_and_tag() {
        assert_eq!(node("recac:dev").image_parts(), ("recac", "dev"));
        assert_eq!(
            node("registry.local:5000/recac").image_parts(),
            ("registry.local:5000/recac", "latest")
        );
        assert_eq!(node("recac").image_parts(), ("recac", "latest"));
    }

    #[test]
    fn the_overlay_runs_the_operator_and_the_egress_proxy_from_the_built_image() {
        let target = repo_root().join("target");
        std::fs::create_dir_all(&target).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("overlay-test-")
            .tempdir_in(&target)
            .unwrap();
        write_overlay(dir.path(), &node("recac:dev"), "operator: {}\n").unwrap();
        let text = std::fs::read_to_string(dir.path().join("kustomization.yaml")).unwrap();
        let parsed: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(parsed["resources"][0], "../../config/default");
        assert_eq!(parsed["images"][0]["newName"], "recac");
        assert_eq!(parsed["images"][0]["newTag"], "dev");
        assert_eq!(parsed["patches"][0]["target"]["name"], "recac-orchestrator");
        assert_eq!(parsed["patches"][1]["target"]["name"], "recac-egress");
        let proxy: serde_json::Value =
            serde_saphyr::from_str(parsed["patches"][1]["patch"].as_str().unwrap()).unwrap();
        assert_eq!(proxy["spec"]["replicas"], 1);
        assert_eq!(
            proxy["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
            "10.99.0.1"
        );
    }

    #[test]
    fn the_helm_values_carry_the_configuration_as_a_map() {
        let values = helm_values(&node("recac:dev"), "operator:\n  namespaces: [a]\n");
        let parsed: serde_json::Value = serde_saphyr::from_str(&values).unwrap();
        assert_eq!(parsed["config"]["operator"]["namespaces"][0], "a");
        assert_eq!(parsed["image"]["repository"], "recac");
        assert_eq!(parsed["image"]["tag"], "dev");
        assert_eq!(parsed["extraEnv"][0]["value"], "10.99.0.1");
    }
}
