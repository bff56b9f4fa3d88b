//! The `recac` command line as users run it.

use std::process::Command;

fn recac(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_recac"))
        .args(args)
        .output()
        .expect("recac runs")
}

#[test]
fn crd_prints_the_committed_crds() {
    let out = recac(&["crd"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for dir in ["crds", "config/crd"] {
        let committed: String = ["agenttask.yaml", "agenttaskschedule.yaml"]
            .iter()
            .map(|file| {
                std::fs::read_to_string(format!("{root}/{dir}/{file}"))
                    .unwrap_or_else(|e| panic!("{dir}/{file}: {e}"))
            })
            .collect();
        // Not assert_eq!: a difference would print both CRDs in full.
        assert!(
            printed == committed,
            "`recac crd` differs from {dir}/: run `make crds` and commit {dir}/"
        );
    }
}

#[test]
fn version_prints_the_package_version() {
    let out = recac(&["version"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        printed.trim(),
        format!("recac {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_command_fails_with_usage() {
    let out = recac(&["frobnicate"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unrecognized subcommand"), "{stderr}");
}

#[test]
fn orchestrate_rejects_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (yaml, key) in [
        ("controller:\n  maxConcurentTasks: 3\n", "maxConcurentTasks"),
        (
            "controller:\n  maxConcurrentTasks: lots\n",
            "controller.maxConcurrentTasks",
        ),
        (
            "controller:\n  maxConcurrentTasks: 0\n",
            "controller.maxConcurrentTasks",
        ),
        ("agent:\n  provider: gemini\n", "agent.provider"),
        (
            "agent:\n  ttlSecondsAfterFinished: 0\n",
            "agent.ttlSecondsAfterFinished",
        ),
        ("agent:\n  secretRefs: [Bad_Name]\n", "agent.secretRefs[0]"),
        (
            "agent:\n  env: [{name: A=B, value: x}]\n",
            "agent.env[0].name",
        ),
        (
            "controller:\n  namespaces: [team-a, team-a]\n",
            "controller.namespaces[1]",
        ),
        (
            "controller:\n  metricsAddress: everywhere\n",
            "controller.metricsAddress",
        ),
        (
            "taskController:\n  maxConcurrentTasks: 0\n",
            "taskController.maxConcurrentTasks",
        ),
        (
            "operator:\n  adminAddress: everywhere\n",
            "operator.adminAddress",
        ),
        (
            "operator:\n  namespaces: [Team]\n",
            "operator.namespaces[0]",
        ),
        (
            "jira:\n  url: https://x.atlassian.net\n  maxRetries: 99\n",
            "jira.maxRetries",
        ),
    ] {
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_recac"))
            .args(["orchestrate", "--config"])
            .arg(&path)
            .env_remove("KUBECONFIG")
            .output()
            .expect("recac runs");
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{yaml}: {stderr}");
    }
}

#[test]
fn the_shipped_manager_config_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/manager/config.yaml"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_recac"))
        .args(["orchestrate", "--config", path, "--check-config"])
        .output()
        .expect("recac runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_deployment_gives_the_operator_its_jira_credentials_from_secrets() {
    let text = include_str!("../../../config/manager/manager.yaml");
    let deployment = text
        .split("\n---")
        .map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).expect("YAML document"))
        .find(|doc| doc["kind"] == "Deployment")
        .expect("a Deployment");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .clone();
    // The variables the configuration reads by default (jira.auth, and the README's webhook).
    for (name, secret, key) in [
        ("JIRA_EMAIL", "recac-jira", "email"),
        ("JIRA_API_TOKEN", "recac-jira", "token"),
        ("JIRA_WEBHOOK_SECRET", "recac-jira-webhook", "secret"),
    ] {
        let var = env
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not set"));
        let from = &var["valueFrom"]["secretKeyRef"];
        assert_eq!(
            (from["name"].as_str(), from["key"].as_str()),
            (Some(secret), Some(key)),
            "{name}"
        );
        assert_eq!(
            from["optional"], true,
            "{name}: the operator starts without Jira"
        );
        assert!(var.get("value").is_none(), "{name} has no inline value");
    }
}
