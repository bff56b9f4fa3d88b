//! A throwaway Kubernetes control plane on loopback.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use crate::process::{ManagedProcess, forget_folder, remove_at_exit};
use crate::{Result, TestEnvError, certs};

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What to start besides etcd and kube-apiserver.
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneOptions {
    /// Start kube-controller-manager with the job, ttl-after-finished and
    /// garbage-collector controllers.
    pub controller_manager: bool,
    /// The folder for certificates, etcd's data and logs (created if missing; removed
    /// with the control plane unless `RECAC_TESTENV_KEEP` is set). Default: a new
    /// temporary folder.
    pub folder: Option<PathBuf>,
    /// Leave the folder (data and logs) in place when the control plane stops.
    pub keep_folder: bool,
}

/// etcd, kube-apiserver and optionally kube-controller-manager, running as local
/// processes. Dropping it stops them and removes their folder.
pub struct ControlPlane {
    folder: PathBuf,
    keep_folder: bool,
    bin_dir: PathBuf,
    server: String,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    apiserver_args: Vec<String>,
    // Stopped in reverse start order: controller-manager, apiserver, etcd.
    processes: Mutex<Vec<ManagedProcess>>,
}

/// The folder holding the control-plane binaries: `KUBEBUILDER_ASSETS`, else the
/// default `make envtest` cache folder.
pub fn binary_folder() -> PathBuf {
    if let Ok(dir) = std::env::var("KUBEBUILDER_ASSETS")
        && !dir.is_empty()
    {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let root = std::env::var("RECAC_ENVTEST_DIR")
        .unwrap_or_else(|_| format!("{home}/.cache/recac/envtest"));
    PathBuf::from(root)
        .join("k8s-v1.37.2-etcd-v3.6.16")
        .join("bin")
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| TestEnvError::Io {
        path: "127.0.0.1:0".into(),
        source,
    })?;
    let port = listener
        .local_addr()
        .map_err(|source| TestEnvError::Io {
            path: "127.0.0.1:0".into(),
            source,
        })?
        .port();
    Ok(port)
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| TestEnvError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn binary(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let path = bin_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(TestEnvError::MissingBinary {
            name: name.into(),
            dir: bin_dir.display().to_string(),
        })
    }
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

impl ControlPlane {
    /// Starts a control plane of its own (most tests share one through
    /// [`shared_control_plane`]).
    pub async fn start(options: ControlPlaneOptions) -> Result<Self> {
        let bin_dir = binary_folder();
        let etcd_bin = binary(&bin_dir, "etcd")?;
        let apiserver_bin = binary(&bin_dir, "kube-apiserver")?;
        let folder = match &options.folder {
            Some(folder) => {
                std::fs::create_dir_all(folder).map_err(|source| TestEnvError::Io {
                    path: folder.display().to_string(),
                    source,
                })?;
                folder.clone()
            }
            None => tempfile::Builder::new()
                .prefix("recac-testenv-")
                .tempdir()
                .map_err(|source| TestEnvError::Io {
                    path: std::env::temp_dir().display().to_string(),
                    source,
                })?
                .keep(),
        };
        let keep_folder = options.keep_folder || std::env::var_os("RECAC_TESTENV_KEEP").is_some();
        let mut plane = Self {
            folder: folder.clone(),
            keep_folder,
            bin_dir,
            server: String::new(),
            kubeconfig_path: folder.join("kubeconfig"),
            kubeconfig_yaml: String::new(),
            apiserver_args: Vec::new(),
            processes: Mutex::new(Vec::new()),
        };

        let certs = certs::generate()?;
        let pki = folder.join("pki");
        std::fs::create_dir_all(&pki).map_err(|source| TestEnvError::Io {
            path: pki.display().to_string(),
            source,
        })?;
        let ca_crt = pki.join("ca.crt");
        let serving_crt = pki.join("apiserver.crt");
        let serving_key = pki.join("apiserver.key");
        let sa_pub = pki.join("sa.pub");
        let sa_key = pki.join("sa.key");
        write(&ca_crt, &certs.ca.cert)?;
        write(&pki.join("ca.key"), &certs.ca.key)?;
        write(&serving_crt, &certs.serving.cert)?;
        write(&serving_key, &certs.serving.key)?;
        write(&sa_pub, &certs.service_account_public)?;
        write(&sa_key, &certs.service_account_private)?;

        // etcd
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = vec![
            format!("--data-dir={}", path_arg(&folder.join("etcd"))),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--name=default".into(),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        let mut etcd =
            ManagedProcess::spawn("etcd", &etcd_bin, &etcd_args, &folder.join("etcd.log"))?;
        wait_for_etcd(&mut etcd, client_port).await?;
        plane.push(etcd);

        // kube-apiserver
        let api_port = free_port()?;
        plane.server = format!("https://127.0.0.1:{api_port}");
        let apiserver_args = vec![
            format!("--etcd-servers={client_url}"),
            format!("--cert-dir={}", path_arg(&pki)),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer=https://127.0.0.1:{api_port}/"),
            format!("--service-account-key-file={}", path_arg(&sa_pub)),
            format!("--service-account-signing-key-file={}", path_arg(&sa_key)),
            format!("--client-ca-file={}", path_arg(&ca_crt)),
            format!("--tls-cert-file={}", path_arg(&serving_crt)),
            format!("--tls-private-key-file={}", path_arg(&serving_key)),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--endpoint-reconciler-type=none".into(),
            "--v=0".into(),
        ];
        let mut apiserver = ManagedProcess::spawn(
            "kube-apiserver",
            &apiserver_bin,
            &apiserver_args,
            &folder.join("kube-apiserver.log"),
        )?;
        plane.apiserver_args = apiserver_args;

        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        plane.kubeconfig_yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: recac-testenv\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: recac-testenv\n  context:\n    cluster: recac-testenv\n    user: admin\n    namespace: default\ncurrent-context: recac-testenv\n",
            server = plane.server,
            ca = b64(&certs.ca.cert),
            cert = b64(&certs.admin.cert),
            key = b64(&certs.admin.key),
        );
        write(&plane.kubeconfig_path, &plane.kubeconfig_yaml)?;
        let wait = wait_for_apiserver(&plane, &mut apiserver).await;
        plane.push(apiserver);
        wait?;

        if options.controller_manager {
            plane.start_controller_manager().await?;
        }
        Ok(plane)
    }

    /// Stops kube-apiserver (etcd keeps the data), waits `down_for`, and starts it again
    /// on the same address; returns once it is ready.
    pub async fn restart_apiserver(&self, down_for: Duration) -> Result<()> {
        let stopped = self.processes.lock().ok().and_then(|mut processes| {
            let index = processes.iter().position(|p| p.name() == "kube-apiserver");
            index.map(|i| processes.remove(i))
        });
        if let Some(mut apiserver) = stopped {
            apiserver.stop();
        }
        tokio::time::sleep(down_for).await;
        let bin = binary(&self.bin_dir, "kube-apiserver")?;
        let mut apiserver = ManagedProcess::spawn(
            "kube-apiserver",
            &bin,
            &self.apiserver_args,
            &self.folder.join("kube-apiserver.restarted.log"),
        )?;
        let wait = wait_for_apiserver(self, &mut apiserver).await;
        // Keep the stop order: the apiserver goes before etcd, after the controller-manager.
        if let Ok(mut processes) = self.processes.lock() {
            let at = processes
                .iter()
                .position(|p| p.name() == "etcd")
                .map_or(processes.len(), |i| i + 1);
            processes.insert(at, apiserver);
        }
        wait
    }

    fn push(&self, process: ManagedProcess) {
        if let Ok(mut processes) = self.processes.lock() {
            processes.push(process);
        }
    }

    /// Starts kube-controller-manager with the job, ttl-after-finished and
    /// garbage-collector controllers, unless it runs already.
    pub async fn start_controller_manager(&self) -> Result<()> {
        let running = self
            .processes
            .lock()
            .map(|p| p.iter().any(|p| p.name() == "kube-controller-manager"))
            .unwrap_or(false);
        if running {
            return Ok(());
        }
        let kcm_bin = binary(&self.bin_dir, "kube-controller-manager")?;
        let port = free_port()?;
        let args = vec![
            format!("--kubeconfig={}", path_arg(&self.kubeconfig_path)),
            "--controllers=job-controller,ttl-after-finished-controller,garbage-collector-controller"
                .into(),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=false".into(),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--cert-dir={}", path_arg(&self.folder.join("kcm-certs"))),
            "--authentication-skip-lookup=true".into(),
            "--concurrent-job-syncs=5".into(),
            "--v=0".into(),
        ];
        let mut kcm = ManagedProcess::spawn(
            "kube-controller-manager",
            &kcm_bin,
            &args,
            &self.folder.join("kube-controller-manager.log"),
        )?;
        // It has no readiness endpoint we can reach without more certificates; a short
        // wait shows whether it crashed on start (bad flags, unreachable apiserver).
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(status) = kcm.exited() {
            return Err(TestEnvError::NotReady {
                name: format!("kube-controller-manager (exited with {status})"),
                seconds: 0,
                log: kcm.log_tail(1500),
            });
        }
        self.push(kcm);
        Ok(())
    }

    /// A new client for this control plane. Each test gets its own: a client is tied
    /// to the tokio runtime that created it.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::try_from(self.config().await?)?)
    }

    /// The client configuration of this control plane (for clients built with layers).
    pub async fn config(&self) -> Result<Config> {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_yaml)
            .map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| TestEnvError::Kubeconfig(e.to_string()))
    }

    /// The kubeconfig file for kubectl and the operator binary.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The apiserver's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A `kubectl` command aimed at this control plane.
    pub fn kubectl(&self) -> std::process::Command {
        let mut command = std::process::Command::new(self.bin_dir.join("kubectl"));
        command.arg(format!("--kubeconfig={}", path_arg(&self.kubeconfig_path)));
        command
    }

    /// Creates a namespace with a unique name starting with `prefix`.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let client = self.client().await?;
        let api: Api<Namespace> = Api::all(client);
        let suffix: u32 = rand_suffix();
        let name = format!("{}-{suffix:06x}", sanitize_prefix(prefix));
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &namespace).await?;
        Ok(name)
    }

    /// Installs CRDs (create or replace) and waits until each is Established.
    pub async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> Result<()> {
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let patch = kube::api::Patch::Apply(crd);
            api.patch(
                &name,
                &kube::api::PatchParams::apply("recac-testenv").force(),
                &patch,
            )
            .await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let current = api.get(&name).await?;
                let established = current
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(TestEnvError::NotReady {
                        name: format!("CRD {name}"),
                        seconds: 30,
                        log: String::new(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            warm_up_writes(&client, crd).await;
        }
        Ok(())
    }

    /// The last bytes of one component's log, for diagnosing a failed test.
    pub fn log_tail(&self, component: &str, max: usize) -> String {
        self.processes
            .lock()
            .ok()
            .and_then(|p| {
                p.iter()
                    .find(|p| p.name() == component)
                    .map(|p| p.log_tail(max))
            })
            .unwrap_or_default()
    }

    /// The process id of one component (`etcd`, `kube-apiserver`, …), if it runs.
    pub fn component_pid(&self, component: &str) -> Option<u32> {
        self.processes
            .lock()
            .ok()?
            .iter()
            .find(|p| p.name() == component)
            .map(|p| p.pid())
    }

    /// The first component that is no longer running: its name, exit status and the end
    /// of its log.
    pub fn exited_component(&self) -> Option<(String, String, String)> {
        let mut processes = self.processes.lock().ok()?;
        processes.iter_mut().find_map(|process| {
            let status = process.exited()?;
            Some((
                process.name().to_string(),
                status.to_string(),
                process.log_tail(4000),
            ))
        })
    }

    /// Stops every process and removes the folder.
    pub fn stop(&self) {
        if let Ok(mut processes) = self.processes.lock() {
            while let Some(mut process) = processes.pop() {
                process.stop();
            }
        }
        if !self.keep_folder {
            let _ = std::fs::remove_dir_all(&self.folder);
            forget_folder(&self.folder);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sanitize_prefix(prefix: &str) -> String {
    let cleaned: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        "test".into()
    } else {
        trimmed.into()
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (std::process::id() << 8)).wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))
        & 0xff_ffff
}

async fn wait_for_etcd(etcd: &mut ManagedProcess, port: u16) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(body) = http_get_plain(port, "/health").await
            && body.contains("\"health\":\"true\"")
        {
            return Ok(());
        }
        if etcd.exited().is_some() || Instant::now() > deadline {
            return Err(TestEnvError::NotReady {
                name: "etcd".into(),
                seconds: READY_TIMEOUT.as_secs(),
                log: etcd.log_tail(1500),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_get_plain(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

async fn wait_for_apiserver(plane: &ControlPlane, apiserver: &mut ManagedProcess) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let client = plane.client().await?;
    loop {
        let request = http::Request::get("/readyz").body(Vec::new());
        if let Ok(request) = request
            && let Ok(body) = client.request_text(request).await
            && body.trim() == "ok"
        {
            return Ok(());
        }
        if apiserver.exited().is_some() || Instant::now() > deadline {
            return Err(TestEnvError::NotReady {
                name: "kube-apiserver".into(),
                seconds: READY_TIMEOUT.as_secs(),
                log: apiserver.log_tail(1500),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The control plane shared by every test in one test binary, started on first use
/// and stopped when the test binary exits. Each test should work in a namespace of
/// its own ([`ControlPlane::namespace`]).
pub async fn shared_control_plane(options: ControlPlaneOptions) -> Result<&'static ControlPlane> {
    static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();
    let plane = SHARED
        .get_or_try_init(|| async {
            let plane = ControlPlane::start(options.clone()).await?;
            if !plane.keep_folder {
                remove_at_exit(&plane.folder);
            }
            Ok::<_, TestEnvError>(plane)
        })
        .await?;
    if options.controller_manager {
        plane.start_controller_manager().await?;
    }
    Ok(plane)
}

/// An Established CRD still makes its first write wait about two seconds while the
/// apiserver prepares that resource's storage. A server-side dry-run create of an
/// empty object (rejected by the schema, as intended) takes that wait here, so that a
/// test or benchmark never measures it.
async fn warm_up_writes(client: &kube::Client, crd: &CustomResourceDefinition) {
    let spec = &crd.spec;
    let Some(version) = spec.versions.iter().find(|v| v.served) else {
        return;
    };
    let resource = kube::api::ApiResource {
        group: spec.group.clone(),
        version: version.name.clone(),
        api_version: format!("{}/{}", spec.group, version.name),
        kind: spec.names.kind.clone(),
        plural: spec.names.plural.clone(),
    };
    let api: Api<kube::api::DynamicObject> = if spec.scope == "Namespaced" {
        Api::namespaced_with(client.clone(), "default", &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    let probe = kube::api::DynamicObject::new("recac-testenv-warm-up", &resource);
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let _ = api.create(&dry_run, &probe).await;
}
