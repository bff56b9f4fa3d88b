//! Turning a pod's container into a local command: environment resolution,
//! `$(VAR)` expansion, volume folders and mount-path substitution.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kube::{Api, Client};

/// Why a container cannot be started yet (kubelet: `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// Everything needed to start one container's process.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub container: String,
    pub image: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub termination_log: PathBuf,
    pub log_path: PathBuf,
    pub fallback_to_logs: bool,
    /// A native sidecar: an init container with `restartPolicy: Always`, started before the
    /// pod's containers and stopped after them.
    pub sidecar: bool,
}

/// Reads Secrets and ConfigMaps once per pod preparation.
struct Sources {
    client: Client,
    namespace: String,
    secrets: HashMap<String, Option<BTreeMap<String, String>>>,
    config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl Sources {
    async fn secret(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
        if let Some(found) = self.secrets.get(name) {
            return Ok(found.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| ConfigError(format!("reading secret {name:?}: {e}")))?;
        let data = secret.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect::<BTreeMap<_, _>>()
        });
        self.secrets.insert(name.to_string(), data.clone());
        Ok(data)
    }

    async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
        if let Some(found) = self.config_maps.get(name) {
            return Ok(found.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let map = api
            .get_opt(name)
            .await
            .map_err(|e| ConfigError(format!("reading configmap {name:?}: {e}")))?;
        let data = map.map(|m| {
            let mut data = m.data.unwrap_or_default();
            for (k, v) in m.binary_data.unwrap_or_default() {
                data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
            }
            data
        });
        self.config_maps.insert(name.to_string(), data.clone());
        Ok(data)
    }
}

/// Prepares every container of `pod` under `pod_dir`: volume folders, files of
/// secret and configMap volumes, and one [`ProcessSpec`] per container.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<Vec<ProcessSpec>, ConfigError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| ConfigError("pod has no spec".into()))?;
    let sidecars = spec.init_containers.as_deref().unwrap_or_default();
    if let Some(init) = sidecars
        .iter()
        .find(|c| c.restart_policy.as_deref() != Some("Always"))
    {
        return Err(ConfigError(format!(
            "init container {:?} runs to completion, which the recac node agent does not support (only sidecars: restartPolicy Always)",
            init.name
        )));
    }
    let mut sources = Sources {
        client: client.clone(),
        namespace,
        secrets: HashMap::new(),
        config_maps: HashMap::new(),
    };
    let volumes = prepare_volumes(
        &mut sources,
        spec.volumes.as_deref().unwrap_or_default(),
        pod_dir,
    )
    .await?;
    // Sidecars first, in order, like the kubelet starts them. Each container sees only its own
    // volume mounts.
    let mut specs = Vec::new();
    for (container, sidecar) in sidecars
        .iter()
        .map(|c| (c, true))
        .chain(spec.containers.iter().map(|c| (c, false)))
    {
        let mut prepared =
            prepare_container(&mut sources, pod, container, &volumes, pod_dir).await?;
        prepared.sidecar = sidecar;
        specs.push(prepared);
    }
    Ok(specs)
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError(format!("{what} {}: {e}", path.display()))
}

fn create_dir(path: &Path) -> Result<(), ConfigError> {
    std::fs::create_dir_all(path).map_err(|e| io_error("creating folder", path, e))
}

/// Safe relative file name from a key or `items[].path` (no `..`, no leading `/`).
fn safe_relative(path: &str) -> Option<PathBuf> {
    let relative = Path::new(path);
    let ok = !path.is_empty()
        && relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    ok.then(|| relative.to_path_buf())
}

async fn prepare_volumes(
    sources: &mut Sources,
    volumes: &[Volume],
    pod_dir: &Path,
) -> Result<HashMap<String, PathBuf>, ConfigError> {
    let mut folders = HashMap::new();
    for volume in volumes {
        let Some(name) = safe_relative(&volume.name) else {
            return Err(ConfigError(format!("bad volume name {:?}", volume.name)));
        };
        let folder = pod_dir.join("volumes").join(name);
        if volume.empty_dir.is_some() {
            create_dir(&folder)?;
        } else if let Some(host) = &volume.host_path {
            folders.insert(volume.name.clone(), PathBuf::from(&host.path));
            continue;
        } else if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.clone().unwrap_or_default();
            let data = sources.secret(&secret_name).await?;
            let data = match data {
                Some(data) => data,
                None if source.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(ConfigError(format!(
                        "secret {secret_name:?} not found (volume {:?})",
                        volume.name
                    )));
                }
            };
            write_files(&folder, &data, source.items.as_deref())?;
        } else if let Some(source) = &volume.config_map {
            let data = sources.config_map(&source.name).await?;
            let data = match data {
                Some(data) => data,
                None if source.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(ConfigError(format!(
                        "configmap {:?} not found (volume {:?})",
                        source.name, volume.name
                    )));
                }
            };
            write_files(&folder, &data, source.items.as_deref())?;
        } else {
            tracing::warn!(
                volume = %volume.name,
                "the recac node agent supports emptyDir, hostPath, secret and configMap volumes only; using an empty folder"
            );
            create_dir(&folder)?;
        }
        folders.insert(volume.name.clone(), folder);
    }
    Ok(folders)
}

fn write_files(
    folder: &Path,
    data: &BTreeMap<String, String>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Result<(), ConfigError> {
    create_dir(folder)?;
    let pairs: Vec<(String, String)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in pairs {
        let (Some(value), Some(relative)) = (data.get(&key), safe_relative(&path)) else {
            continue;
        };
        let file = folder.join(relative);
        if let Some(parent) = file.parent() {
            create_dir(parent)?;
        }
        std::fs::write(&file, value).map_err(|e| io_error("writing", &file, e))?;
    }
    Ok(())
}

async fn prepare_container(
    sources: &mut Sources,
    pod: &Pod,
    container: &Container,
    volumes: &HashMap<String, PathBuf>,
    pod_dir: &Path,
) -> Result<ProcessSpec, ConfigError> {
    let name = safe_relative(&container.name)
        .ok_or_else(|| ConfigError(format!("bad container name {:?}", container.name)))?;
    // Path prefixes to substitute: volume mounts and the termination-message path.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container.volume_mounts.as_deref().unwrap_or_default() {
        let Some(folder) = volumes.get(&mount.name) else {
            return Err(ConfigError(format!(
                "volume mount {:?} names no volume of the pod",
                mount.name
            )));
        };
        let mut folder = folder.clone();
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let relative =
                safe_relative(sub).ok_or_else(|| ConfigError(format!("bad subPath {sub:?}")))?;
            folder = folder.join(relative);
            create_dir(&folder)?;
        }
        let path = normalize_mount_path(&mount.mount_path);
        if path != "/" && !path.is_empty() {
            mounts.push((path, folder));
        }
    }
    let ancestors = mount_ancestors(&mounts, &pod_dir.join(format!("{}.root", name.display())))?;
    let termination_log = pod_dir.join(format!("{}.termination-log", name.display()));
    std::fs::write(&termination_log, b"").map_err(|e| io_error("creating", &termination_log, e))?;
    let termination_path = container
        .termination_message_path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/dev/termination-log".into());
    mounts.push((
        normalize_mount_path(&termination_path),
        termination_log.clone(),
    ));
    // Longest first, so nested mounts win.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));

    let env = resolve_env(sources, pod, container).await?;
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut argv: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .map(|a| expand(a, &lookup))
        .map(|a| map_path(a, &ancestors, &mounts))
        .collect();
    if container.command.as_ref().is_none_or(|c| c.is_empty()) {
        return Err(ConfigError(format!(
            "container {:?} has no command: the recac node agent runs commands, not images",
            container.name
        )));
    }
    let program = argv.remove(0);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.clone(), map_path(v.clone(), &ancestors, &mounts)))
        .collect();

    let cwd = match container.working_dir.as_deref().filter(|w| !w.is_empty()) {
        Some(dir) => {
            let mapped = PathBuf::from(substitute(&normalize_mount_path(dir), &mounts));
            if mapped.starts_with(pod_dir) {
                create_dir(&mapped)?;
            }
            mapped
        }
        None => match first_mount_folder(container, &mounts) {
            Some(folder) => folder,
            None => {
                let dir = pod_dir.join(format!("{}.cwd", name.display()));
                create_dir(&dir)?;
                dir
            }
        },
    };
    Ok(ProcessSpec {
        container: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        program,
        args: argv,
        env,
        cwd,
        log_path: pod_dir.join(format!("{}.log", name.display())),
        termination_log,
        fallback_to_logs: container.termination_message_policy.as_deref()
            == Some("FallbackToLogsOnError"),
        sidecar: false,
    })
}

/// The folders above mount paths (`/var/run/recac/secrets` above
/// `/var/run/recac/secrets/creds`), each mapped to a folder under `root` where every mount
/// below it appears as a symbolic link to its volume folder, so a process handed the parent
/// path can list and read the mounts in it. A mount nested in another mount is reached
/// through that mount's folder and gets no link.
fn mount_ancestors(
    mounts: &[(String, PathBuf)],
    root: &Path,
) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    let is_mount = |path: &str| mounts.iter().any(|(m, _)| m == path);
    let mut ancestors: Vec<(String, PathBuf)> = Vec::new();
    for (path, folder) in mounts {
        let parents: Vec<&str> = path
            .match_indices('/')
            .map(|(i, _)| &path[..i])
            .filter(|p| !p.is_empty())
            .collect();
        if parents.iter().any(|p| is_mount(p)) {
            continue;
        }
        let link = root.join(path.trim_start_matches('/'));
        if let Some(parent) = link.parent() {
            create_dir(parent)?;
        }
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(folder, &link).map_err(|e| io_error("linking", &link, e))?;
        }
        for parent in parents {
            if !ancestors.iter().any(|(a, _)| a == parent) {
                ancestors.push((
                    parent.to_string(),
                    root.join(parent.trim_start_matches('/')),
                ));
            }
        }
    }
    Ok(ancestors)
}

/// A value that is exactly a folder above mount paths (optionally with a trailing `/`)
/// becomes its mapped folder; anything else goes through [`substitute`]. Never both: a
/// mapped folder lies under the node's work folder, which may itself sit below a mount
/// path (`/tmp`).
fn map_path(
    value: String,
    ancestors: &[(String, PathBuf)],
    mounts: &[(String, PathBuf)],
) -> String {
    let trimmed = value.strip_suffix('/').unwrap_or(&value);
    match ancestors.iter().find(|(path, _)| path == trimmed) {
        Some((_, folder)) => folder.display().to_string(),
        None => substitute(&value, mounts),
    }
}

fn first_mount_folder(container: &Container, mounts: &[(String, PathBuf)]) -> Option<PathBuf> {
    let first = container.volume_mounts.as_ref()?.first()?;
    let path = normalize_mount_path(&first.mount_path);
    mounts
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, f)| f.clone())
        .filter(|f| f.is_dir())
}

fn normalize_mount_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

/// The container's environment like the kubelet builds it: `envFrom` first, then
/// `env` (later entries win), with `$(VAR)` references to earlier variables expanded.
async fn resolve_env(
    sources: &mut Sources,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| {
        if let Some(entry) = env.iter_mut().find(|(k, _)| *k == key) {
            entry.1 = value;
        } else {
            env.push((key, value));
        }
    };
    for from in container.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(secret) = &from.secret_ref {
            match sources.secret(&secret.name).await? {
                Some(data) => data,
                None if secret.optional == Some(true) => continue,
                None => return Err(ConfigError(format!("secret {:?} not found", secret.name))),
            }
        } else if let Some(map) = &from.config_map_ref {
            match sources.config_map(&map.name).await? {
                Some(data) => data,
                None if map.optional == Some(true) => continue,
                None => return Err(ConfigError(format!("configmap {:?} not found", map.name))),
            }
        } else {
            continue;
        };
        for (key, value) in data {
            set(&mut env, format!("{prefix}{key}"), value);
        }
    }
    for var in container.env.as_deref().unwrap_or_default() {
        let value = if let Some(from) = &var.value_from {
            if let Some(selector) = &from.secret_key_ref {
                let data = sources.secret(&selector.name).await?;
                match data.as_ref().and_then(|d| d.get(&selector.key)) {
                    Some(value) => value.clone(),
                    None if selector.optional == Some(true) => continue,
                    None => {
                        return Err(ConfigError(format!(
                            "key {:?} of secret {:?} not found (env {})",
                            selector.key, selector.name, var.name
                        )));
                    }
                }
            } else if let Some(selector) = &from.config_map_key_ref {
                let data = sources.config_map(&selector.name).await?;
                match data.as_ref().and_then(|d| d.get(&selector.key)) {
                    Some(value) => value.clone(),
                    None if selector.optional == Some(true) => continue,
                    None => {
                        return Err(ConfigError(format!(
                            "key {:?} of configmap {:?} not found (env {})",
                            selector.key, selector.name, var.name
                        )));
                    }
                }
            } else if let Some(field) = &from.field_ref {
                field_value(pod, &field.field_path).ok_or_else(|| {
                    ConfigError(format!(
                        "unsupported fieldRef {:?} (env {})",
                        field.field_path, var.name
                    ))
                })?
            } else {
                return Err(ConfigError(format!(
                    "unsupported valueFrom for env {}",
                    var.name
                )));
            }
        } else {
            let lookup: HashMap<&str, &str> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(var.value.as_deref().unwrap_or_default(), &lookup)
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let from_map = |map: &Option<BTreeMap<String, String>>, rest: &str| -> Option<String> {
        let key = rest.strip_prefix("['")?.strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone(),
        "spec.serviceAccountName" => Some(
            pod.spec
                .as_ref()?
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
        ),
        "status.hostIP" | "status.podIP" => Some("127.0.0.1".into()),
        _ => {
            if let Some(rest) = path.strip_prefix("metadata.labels") {
                from_map(&meta.labels, rest)
            } else if let Some(rest) = path.strip_prefix("metadata.annotations") {
                from_map(&meta.annotations, rest)
            } else {
                None
            }
        }
    }
}

/// Kubernetes `$(VAR)` expansion: `$(NAME)` becomes the variable's value when it
/// is defined (else stays as written), `$$` becomes `$`.
pub fn expand(input: &str, env: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Replaces each mount path (longest first) where it appears as a whole path
/// prefix: not preceded by a path character or `/`, and followed by the end, `/` or a
/// character that cannot continue a file name. Each position is rewritten at most
/// once, so a folder that itself contains a mount path is never rewritten twice.
pub fn substitute(input: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut previous: Option<char> = None;
    let mut index = 0;
    'scan: while index < input.len() {
        let rest = &input[index..];
        let boundary_before = previous.is_none_or(|c| !(is_path_char(c) || c == '/'));
        if boundary_before && rest.starts_with('/') {
            for (path, folder) in mounts {
                if let Some(after) = rest.strip_prefix(path.as_str())
                    && after.chars().next().is_none_or(|c| !is_path_char(c))
                {
                    out.push_str(&folder.display().to_string());
                    index += path.len();
                    previous = path.chars().last();
                    continue 'scan;
                }
            }
        }
        let Some(c) = rest.chars().next() else {
            break;
        };
        out.push(c);
        previous = Some(c);
        index += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_kubernetes() {
        let env: HashMap<&str, &str> = [("A", "1"), ("B", "two")].into_iter().collect();
        assert_eq!(expand("x$(A)y$(B)", &env), "x1ytwo");
        assert_eq!(expand("$(C) $$(A) $5 $", &env), "$(C) $(A) $5 $");
    }

    #[test]
    fn folders_above_mounts_list_the_mounts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let creds = dir.path().join("creds");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&creds).expect("creds");
        std::fs::create_dir_all(&other).expect("other");
        std::fs::write(creds.join("TOKEN"), "t").expect("token");
        let mut mounts = vec![
            ("/var/run/recac/secrets/creds".to_string(), creds),
            ("/var/run/recac/secrets/other".to_string(), other),
            ("/workspace".to_string(), dir.path().join("ws")),
            // The node's own folder may lie below a mount path: its mapped folders stay as
            // they are.
            ("/tmp".to_string(), dir.path().join("scratch")),
            (
                dir.path().display().to_string(),
                dir.path().join("elsewhere"),
            ),
        ];
        mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
        let root = dir.path().join("root");
        let ancestors = mount_ancestors(&mounts, &root).expect("linked");
        let mapped = map_path("/var/run/recac/secrets/".into(), &ancestors, &mounts);
        assert_eq!(PathBuf::from(&mapped), root.join("var/run/recac/secrets"));
        let token = std::fs::read_to_string(PathBuf::from(&mapped).join("creds/TOKEN"));
        assert_eq!(token.expect("readable through the link"), "t");
        let mut names: Vec<String> = std::fs::read_dir(&mapped)
            .expect("listable")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["creds", "other"]);
        assert_eq!(
            map_path("/var/run/x".into(), &ancestors, &mounts),
            "/var/run/x",
            "only whole values are rewritten"
        );
    }

    #[test]
    fn substitutes_path_prefixes_only() {
        let mounts = vec![
            ("/workspace/cache".to_string(), PathBuf::from("/t/cache")),
            ("/workspace".to_string(), PathBuf::from("/t/ws")),
            ("/dev/termination-log".to_string(), PathBuf::from("/t/term")),
        ];
        assert_eq!(
            substitute(
                "echo a > /dev/termination-log; ls /workspace/x /workspace",
                &mounts
            ),
            "echo a > /t/term; ls /t/ws/x /t/ws"
        );
        assert_eq!(
            substitute("--out=/workspace/cache/y", &mounts),
            "--out=/t/cache/y"
        );
        assert_eq!(
            substitute("/workspaces /a/workspace", &mounts),
            "/workspaces /a/workspace"
        );
        assert_eq!(substitute("'/workspace'", &mounts), "'/t/ws'");
    }
}
