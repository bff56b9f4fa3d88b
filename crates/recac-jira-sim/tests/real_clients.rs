//! The simulator driven by a widely used Jira client library, pycontribs
//! `jira` (version pinned in tests/jira-clients/requirements.txt), through
//! its public API, in both flavours: tests/jira-clients/drive.py connects,
//! reads myself and the field list, pages a search with several fields,
//! reads issues, transitions, comments, searches users, assigns, edits
//! labels, sets properties and checks the 404, 401 and bad-JQL 400 errors.
//!
//! The client runs from a virtualenv outside the checkout that
//! hack/jira-clients.sh creates (`make jira-clients-env`; `make test` runs
//! it first), or from `$RECAC_JIRA_CLIENTS_PYTHON`. Without python3 the
//! tests pass with a loud SKIPPED message.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use recac_jira_sim::contract::Contract;
use recac_jira_sim::{
    BOT_EMAIL, BOT_NAME, BOT_PAT, BOT_TOKEN, IssueSeed, JiraSim, Seed, SimFlavor, UserDef,
};
use serde_json::json;

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The virtualenv's python, or why the suite is skipped.
fn python() -> &'static Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(p) = std::env::var_os("RECAC_JIRA_CLIENTS_PYTHON").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            assert!(
                p.exists(),
                "RECAC_JIRA_CLIENTS_PYTHON={} does not exist; run `make jira-clients-env`",
                p.display()
            );
            return Ok(p);
        }
        let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        if std::process::Command::new(&python3)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(format!("{python3} not found"));
        }
        // Idempotent and quick when the venv is cached.
        let script = repo_root().join("hack/jira-clients.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout.lines().last().map(str::trim).unwrap_or("");
        assert!(
            out.status.success() && !path.is_empty(),
            "{} failed ({}); run `make jira-clients-env` to install the Jira client venv.\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(PathBuf::from(path))
    })
}

async fn seeded(flavor: SimFlavor) -> JiraSim {
    let sim = JiraSim::start(Seed {
        flavor,
        ..Seed::default()
    })
    .await
    .expect("simulator starts");
    sim.add_user(UserDef {
        account_id: "70121:0c7d2f45-alice".into(),
        name: "alice".into(),
        display_name: "Alice Liddell".into(),
        email: "alice@example.com".into(),
        token: None,
        pat: None,
        permissions: None,
    });
    sim.add_issue(IssueSeed {
        project: "OPS".into(),
        summary: "Build is red".into(),
        description: Some("The main build fails.\n\nSee the CI log.".into()),
        labels: vec!["recac-agent".into()],
        ..Default::default()
    });
    sim.add_issues("OPS", "Task", &["recac-agent"], 4);
    sim.add_issue(IssueSeed {
        project: "OPS".into(),
        summary: "Not for the agent".into(),
        ..Default::default()
    });
    sim
}

async fn drive(flavor: SimFlavor) {
    let python = match python() {
        Ok(p) => p.clone(),
        Err(why) => {
            // Straight to stderr, past the test harness's capture, so the skip shows.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: real Jira client suite ({flavor:?}): {why}. Install python3 to run it. ***\n"
            );
            return;
        }
    };
    let sim = seeded(flavor).await;
    let (name, user) = match flavor {
        SimFlavor::Cloud => ("cloud", BOT_EMAIL),
        SimFlavor::Datacenter => ("datacenter", BOT_NAME),
    };
    let driver = repo_root().join("tests/jira-clients/drive.py");
    let child = tokio::process::Command::new(&python)
        .arg(&driver)
        .args(["--url", sim.url(), "--flavor", name, "--user", user])
        .args(["--token", BOT_TOKEN, "--pat", BOT_PAT])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), child)
        .await
        .expect("the driver finishes within 3 minutes")
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let result = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or("");
    assert!(
        out.status.success(),
        "pycontribs jira against the {name} simulator failed ({result}):\n{stdout}\n{stderr}"
    );
    assert!(result.starts_with(name), "{stdout}");
    let (passed, total) = result
        .split_whitespace()
        .nth(1)
        .and_then(|r| r.split_once('/'))
        .expect("RESULT <flavor> <passed>/<total>");
    assert_eq!(passed, total);
    assert!(total.parse::<u32>().unwrap_or(0) >= 14, "{stdout}");

    // What the client did is what the simulator holds.
    let ops1 = sim.issue("OPS-1").unwrap();
    assert_eq!(ops1.status, "Done");
    assert_eq!(
        ops1.comments.last().map(|c| c.body.clone()),
        Some(json!("Finished by the driver"))
    );
    assert_eq!(sim.issue("OPS-2").unwrap().comments.len(), 1);
    assert_eq!(sim.issue("OPS-3").unwrap().assignee, None);
    let ops4 = sim.issue("OPS-4").unwrap();
    assert_eq!(ops4.labels, ["recac-agent", "recac-claimed"]);
    assert_eq!(ops4.summary, "Renamed by the driver");
    assert_eq!(
        sim.issue("OPS-5").unwrap().properties["recac.claim"]["attempt"],
        2
    );

    let calls = sim.calls();
    // The search pages asked for several fields, one parameter each.
    let search_path = match flavor {
        SimFlavor::Cloud => "/rest/api/2/search/jql",
        SimFlavor::Datacenter => "/rest/api/2/search",
    };
    assert!(
        calls.iter().any(|c| c.path == search_path
            && c.status == 200
            && c.query.matches("fields=").count() == 3),
        "no search with three `fields` parameters: {:#?}",
        calls
            .iter()
            .filter(|c| c.path == search_path)
            .map(|c| &c.query)
            .collect::<Vec<_>>()
    );
    for wanted in [
        "/rest/api/2/serverInfo",
        "/rest/api/2/field",
        "/rest/api/2/user/search",
        "/rest/api/latest/issue/OPS-3/assignee",
    ] {
        assert!(
            calls.iter().any(|c| c.path == wanted && c.status < 300),
            "{wanted} never answered"
        );
    }
    // On Cloud, every reply the client got is one the contract allows.
    if flavor == SimFlavor::Cloud {
        let contract = Contract::bundled().unwrap_or_else(|e| panic!("the Jira contract: {e}"));
        let problems: Vec<String> = calls
            .iter()
            .flat_map(|c| contract.check_response(c))
            .collect();
        assert!(
            problems.is_empty(),
            "contract violations:\n{}",
            problems.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pycontribs_jira_against_cloud() {
    drive(SimFlavor::Cloud).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pycontribs_jira_against_datacenter() {
    drive(SimFlavor::Datacenter).await;
}
