//! The Helm chart charts/recac renders the objects of `kubectl kustomize config/default`,
//! its CRDs are the repository's crds/, and `helm lint` finds nothing to report.
//!
//! helm comes from `RECAC_HELM` (the binary's path), else from `hack/helm.sh` (which
//! builds it once from the Go module proxy into `$HOME/.cache/recac/helm` and prints its
//! path); kubectl (for kustomize) from the control-plane folder of `make envtest`
//! (`KUBEBUILDER_ASSETS`, else the default cache folder).
//!
//! Before comparing, what only Helm adds is dropped: its labels (helm.sh/chart,
//! app.kubernetes.io/managed-by, instance, version) and the pod template's `checksum/*`
//! annotations; kustomize's generated ConfigMap name `recac-config-<hash>` becomes
//! `recac-config` wherever it occurs; and YAML files held in a ConfigMap (config.yaml)
//! are compared parsed, as the chart renders the configuration from a map of values
//! (keys sorted, comments gone); integral floats count as integers (crds/ says
//! `maximum: 10.0`, kustomize prints `10`, helm copies the file as it is).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// Labels Helm charts put on every object, which kustomize's objects do not carry.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The helm binary: `RECAC_HELM`, else the path `hack/helm.sh` prints (found in its
/// cache, or built there the first time). Never skips: without helm the test fails.
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Ok(path) = std::env::var("RECAC_HELM")
            && !path.is_empty()
        {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "RECAC_HELM={} is not a file: run hack/helm.sh and set RECAC_HELM to the path it prints",
                path.display()
            );
            return path;
        }
        let out = Command::new("bash")
            .arg(repo().join("hack/helm.sh"))
            .current_dir(repo())
            .output()
            .unwrap_or_else(|e| panic!("cannot run hack/helm.sh (bash): {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout.lines().last().map(str::trim).unwrap_or_default();
        assert!(
            out.status.success() && !path.is_empty() && Path::new(path).is_file(),
            "helm not found and hack/helm.sh could not build it ({}): run hack/helm.sh \
             (it needs Go and the Go module proxy) and set RECAC_HELM to the path it prints; \
             the end of its output:\n{}",
            out.status,
            tail(&stderr, 30)
        );
        PathBuf::from(path)
    })
}

/// kubectl, from the control-plane binaries of `make envtest`.
fn kubectl() -> PathBuf {
    let path = recac_testenv::binary_folder().join("kubectl");
    assert!(
        path.is_file(),
        "{} not found: run `make envtest` (hack/envtest.sh) and export KUBEBUILDER_ASSETS to the folder it prints",
        path.display()
    );
    path
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command in the repository's root; its stdout, or a panic with its stderr.
fn run(program: &Path, args: &[&str]) -> String {
    let home = tempfile::tempdir().expect("a temporary folder");
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        // helm reads and writes nothing of the user's own configuration.
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "`{} {}` failed ({}):\n{}{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The objects of a multi-document YAML stream (documents split on lines `---`; empty
/// and comment-only documents skipped).
fn documents(stream: &str, source: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in stream.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("a document");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.into_iter()
        .filter(|doc| {
            doc.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|doc| {
            serde_saphyr::from_str::<Value>(&doc)
                .unwrap_or_else(|e| panic!("{source}: invalid YAML document: {e}\n{doc}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `recac-config-<10-character hash>` (kustomize's configMapGenerator) becomes
/// `recac-config`, wherever it is.
fn normalise_generated_names(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Some(hash) = s.strip_prefix("recac-config-")
                && hash.len() == 10
                && hash
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                *s = "recac-config".into();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_generated_names),
        Value::Object(map) => map.values_mut().for_each(normalise_generated_names),
        _ => {}
    }
}

/// Integral floats become integers: crds/ says `maximum: 10.0`, which kustomize (a JSON
/// round trip) prints as `10` and helm copies as it is; both are the JSON number 10.
fn normalise_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && !n.is_i64()
                && !n.is_u64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_numbers),
        Value::Object(map) => map.values_mut().for_each(normalise_numbers),
        _ => {}
    }
}

/// Removes `keys` (and `key/` prefixes ending in `/`) from the map at `path`, then the
/// map itself if it is left empty.
fn drop_keys(object: &mut Value, path: &[&str], keys: &[&str]) {
    let (last, parents) = path.split_last().expect("a path");
    let mut parent = &mut *object;
    for key in parents {
        match parent.get_mut(*key) {
            Some(next) => parent = next,
            None => return,
        }
    }
    let Value::Object(parent) = parent else {
        return;
    };
    let Some(Value::Object(map)) = parent.get_mut(*last) else {
        return;
    };
    map.retain(|k, _| {
        !keys
            .iter()
            .any(|drop| k == drop || (drop.ends_with('/') && k.starts_with(drop)))
    });
    if map.is_empty() {
        parent.remove(*last);
    }
}

/// An object as compared: without what only Helm adds, with generated names normalised and
/// YAML files in ConfigMaps parsed.
fn normalise(mut object: Value) -> Value {
    drop_keys(&mut object, &["metadata", "labels"], &HELM_LABELS);
    drop_keys(
        &mut object,
        &["spec", "template", "metadata", "annotations"],
        &["checksum/"],
    );
    normalise_generated_names(&mut object);
    normalise_numbers(&mut object);
    if object["kind"] == "ConfigMap"
        && let Some(Value::Object(data)) = object.get_mut("data")
    {
        for (key, file) in data.iter_mut() {
            if (key.ends_with(".yaml") || key.ends_with(".yml"))
                && let Value::String(text) = file
            {
                let parsed: Value = serde_saphyr::from_str(text)
                    .unwrap_or_else(|e| panic!("ConfigMap data {key}: invalid YAML: {e}"));
                *file = parsed;
                normalise_numbers(file);
            }
        }
    }
    object
}

/// kind/namespace/name (namespace empty for cluster-scoped objects).
fn key(object: &Value) -> String {
    let meta = &object["metadata"];
    format!(
        "{}/{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        meta["namespace"].as_str().unwrap_or(""),
        meta["name"].as_str().unwrap_or("?")
    )
}

fn by_key(objects: Vec<Value>, source: &str) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for object in objects {
        let object = normalise(object);
        let k = key(&object);
        assert!(
            map.insert(k.clone(), object).is_none(),
            "{source} renders {k} twice"
        );
    }
    map
}

fn show(value: &Value) -> String {
    serde_json::to_string(value).expect("JSON")
}

/// Where `a` (kustomize) and `b` (helm) differ: one line per differing path.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(vb) => differences(&p, va, vb, out),
                    None => out.push(format!("{p}: only in kustomize: {}", show(va))),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.push(format!("{path}.{k}: only in helm: {}", show(vb)));
                }
            }
        }
        (Value::Array(xa), Value::Array(xb)) if xa.len() == xb.len() => {
            for (i, (va, vb)) in xa.iter().zip(xb).enumerate() {
                differences(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!(
            "{path}:\n    kustomize: {}\n    helm:      {}",
            show(a),
            show(b)
        )),
        _ => {}
    }
}

fn helm_template(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "recac",
        "charts/recac",
        "--namespace",
        "recac-system",
    ];
    args.extend_from_slice(extra);
    run(helm(), &args)
}

#[test]
fn the_chart_renders_the_objects_of_config_default() {
    let helm_out = helm_template(&["--include-crds"]);
    let kustomize_out = run(&kubectl(), &["kustomize", "config/default"]);
    let helm_objects = by_key(documents(&helm_out, "helm template"), "helm template");
    let kustomize_objects = by_key(
        documents(&kustomize_out, "kubectl kustomize"),
        "kubectl kustomize",
    );

    let only_kustomize: Vec<&String> = kustomize_objects
        .keys()
        .filter(|k| !helm_objects.contains_key(*k))
        .collect();
    let only_helm: Vec<&String> = helm_objects
        .keys()
        .filter(|k| !kustomize_objects.contains_key(*k))
        .collect();
    assert!(
        only_kustomize.is_empty() && only_helm.is_empty(),
        "the chart and config/default render different objects (kind/namespace/name)\n  \
         only in kustomize: {only_kustomize:?}\n  only in helm: {only_helm:?}"
    );

    for (k, kustomize_object) in &kustomize_objects {
        let helm_object = &helm_objects[k];
        if kustomize_object != helm_object {
            let mut diff = Vec::new();
            differences("", kustomize_object, helm_object, &mut diff);
            panic!(
                "{k} differs between `kubectl kustomize config/default` and `helm template` \
                 (charts/recac):\n{}",
                diff.join("\n")
            );
        }
    }
    // Every kind of config/default is there: a chart rendering nothing would pass above.
    let kinds: std::collections::BTreeSet<&str> = helm_objects
        .values()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} rendered: {kinds:?}");
    }
}

/// The pod template carries the configuration's checksum (a change rolls the pods), and
/// it follows the configuration.
#[test]
fn a_configuration_change_changes_the_pod_template() {
    let checksum = |extra: &[&str]| -> String {
        let deployment = documents(&helm_template(extra), "helm template")
            .into_iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("a Deployment");
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("a checksum/config annotation on the pod template")
            .to_string()
    };
    assert_ne!(
        checksum(&[]),
        checksum(&["--set", "config.taskController.workers=8"])
    );
}

/// The CRDs Helm installs (charts/recac/crds) are the repository's crds/, byte for byte.
#[test]
fn the_charts_crds_are_the_repositorys() {
    let names = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(repo().join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| {
                e.expect("a folder entry")
                    .file_name()
                    .into_string()
                    .unwrap()
            })
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        names.sort();
        names
    };
    let crds = names("crds");
    assert!(!crds.is_empty(), "no CRDs in crds/");
    assert_eq!(
        names("charts/recac/crds"),
        crds,
        "charts/recac/crds holds other files than crds/"
    );
    for name in &crds {
        let repo_crd = std::fs::read(repo().join("crds").join(name)).expect("crds/");
        let chart_crd =
            std::fs::read(repo().join("charts/recac/crds").join(name)).expect("chart crds/");
        assert!(
            repo_crd == chart_crd,
            "charts/recac/crds/{name} differs from crds/{name}: copy it (cp crds/{name} charts/recac/crds/)"
        );
    }
}

#[test]
fn helm_lint_passes() {
    let out = run(helm(), &["lint", "--strict", "charts/recac"]);
    assert!(
        !out.contains("[WARNING]") && !out.contains("[ERROR]"),
        "helm lint reports:\n{out}"
    );
    // The optional objects' templates too.
    let out = run(
        helm(),
        &[
            "lint",
            "--strict",
            "charts/recac",
            "--set",
            "jira.email=a@example.com,jira.token=t,webhook.secret=s,namespace.create=false",
            "--set-string",
            "agent.caBundle=-----BEGIN CERTIFICATE-----",
            "--set-string",
            "agent.knownHosts=git.example.com ssh-ed25519 AAAA",
            "--set-string",
            "extraEnv[0].name=HTTPS_PROXY,extraEnv[0].value=http://proxy:3128",
        ],
    );
    assert!(
        !out.contains("[WARNING]") && !out.contains("[ERROR]"),
        "helm lint (optional objects) reports:\n{out}"
    );
}

/// Values create the Secrets and the agents' CA bundle; without them the chart creates
/// neither (the Deployment refers to Secrets made outside the chart).
#[test]
fn values_create_the_optional_objects() {
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let ca_file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(ca_file.path(), ca).expect("write the CA");
    let ca_arg = format!("agent.caBundle={}", ca_file.path().display());
    let objects = by_key(
        documents(
            &helm_template(&[
                "--set",
                "jira.email=dev@example.com,jira.token=tok,webhook.secret=hook",
                "--set",
                "jira.secretName=my-jira,namespace.create=false,image.pullPolicy=Always",
                "--set-file",
                &ca_arg,
                "--set-string",
                "agent.knownHosts=git.example.com ssh-ed25519 AAAA",
                "--set-string",
                "extraEnv[0].name=HTTPS_PROXY,extraEnv[0].value=http://proxy:3128",
            ]),
            "helm template",
        ),
        "helm template",
    );
    let object = |k: &str| -> &Value {
        objects
            .get(k)
            .unwrap_or_else(|| panic!("{k} not rendered: {:?}", objects.keys()))
    };
    // base64 of dev@example.com, tok and hook.
    let jira = object("Secret/recac-system/my-jira");
    assert_eq!(jira["data"]["email"], "ZGV2QGV4YW1wbGUuY29t");
    assert_eq!(jira["data"]["token"], "dG9r");
    let webhook = object("Secret/recac-system/recac-jira-webhook");
    assert_eq!(webhook["data"]["secret"], "aG9vaw==");
    let agent_ca = object("ConfigMap/recac-system/recac-agent-ca");
    assert_eq!(agent_ca["data"]["ca.crt"], ca);
    let known_hosts = object("ConfigMap/recac-system/recac-agent-known-hosts");
    assert_eq!(
        known_hosts["data"]["known_hosts"],
        "git.example.com ssh-ed25519 AAAA\n"
    );
    assert!(
        !objects.keys().any(|k| k.starts_with("Namespace/")),
        "namespace.create=false renders no Namespace"
    );
    let deployment = object("Deployment/recac-system/recac-orchestrator");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["imagePullPolicy"], "Always");
    let env_secret = |name: &str| -> Value {
        container["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))["valueFrom"]["secretKeyRef"]["name"]
            .clone()
    };
    assert_eq!(env_secret("JIRA_EMAIL"), "my-jira");
    assert_eq!(env_secret("JIRA_API_TOKEN"), "my-jira");
    assert_eq!(env_secret("JIRA_WEBHOOK_SECRET"), "recac-jira-webhook");
    let extra = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "HTTPS_PROXY")
        .expect("extraEnv's HTTPS_PROXY");
    assert_eq!(extra["value"], "http://proxy:3128");
    // normalise() dropped the checksums: look at the raw render for the Secrets' one.
    let raw = helm_template(&["--set", "webhook.secret=hook"]);
    assert!(
        raw.contains("checksum/secrets:"),
        "created Secrets roll the pods"
    );
    assert!(
        !helm_template(&[]).contains("kind: Secret"),
        "no Secret without values"
    );
}
