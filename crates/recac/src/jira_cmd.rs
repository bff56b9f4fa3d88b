//! `recac jira …`: operator commands to check a Jira connection, search,
//! list transitions, and run the Jira simulator locally.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use futures::StreamExt;
use recac_jira::{Flavor, JiraClient, JiraConfig};

#[derive(Args)]
pub struct JiraArgs {
    /// The operator's config file (its `jira:` section is used). Without it,
    /// settings come from JIRA_URL, JIRA_FLAVOR, JIRA_EMAIL/JIRA_USERNAME +
    /// JIRA_API_TOKEN, or JIRA_PAT.
    #[arg(long, global = true, env = "RECAC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: JiraCommand,
}

#[derive(Subcommand)]
enum JiraCommand {
    /// Authenticate, print the bot user, and check permissions on a project.
    Check {
        /// Project key to check (default: `jira.project` or JIRA_PROJECT).
        #[arg(long)]
        project: Option<String>,
    },
    /// Print the key and summary of every issue matching a JQL query (all pages).
    Search {
        /// The JQL query, e.g. 'project = OPS AND labels = "recac-agent"'.
        jql: String,
    },
    /// List the transitions available on an issue now.
    Transitions {
        /// The issue key, e.g. OPS-123.
        key: String,
    },
    /// Show which tickets the configured sources would claim now, with the resolved
    /// repository and the AgentTask that would be created (YAML). Writes nothing to Jira or
    /// Kubernetes. Needs --config with a `sources:` section.
    Preview {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Run the in-memory Jira simulator until interrupted (for local runs).
    Sim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// A YAML or JSON seed file: flavor, users, projects, issues, workflow.
        #[arg(long, value_name = "FILE")]
        seed: Option<PathBuf>,
        /// `cloud` or `datacenter` (overrides the seed file's flavor).
        #[arg(long)]
        flavor: Option<String>,
    },
}

/// Permissions `check` reports; the first two are required.
const CHECKED_PERMISSIONS: &[&str] = &[
    "BROWSE_PROJECTS",
    "TRANSITION_ISSUES",
    "ADD_COMMENTS",
    "EDIT_ISSUES",
    "ASSIGN_ISSUES",
];

pub fn run(args: JiraArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The `jira` settings: from the config file when given, else from env.
pub fn load_settings(config: Option<&Path>) -> Result<JiraConfig, String> {
    let cfg = match config {
        Some(path) => crate::config::OperatorConfig::load(Some(path))
            .map_err(|e| e.to_string())?
            .jira
            .ok_or_else(|| format!("{} has no `jira:` section", path.display()))?,
        None => JiraConfig::from_env().map_err(|e| e.to_string())?,
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

async fn execute(args: JiraArgs) -> Result<ExitCode, String> {
    if let JiraCommand::Sim { addr, seed, flavor } = &args.command {
        return run_sim(*addr, seed.as_deref(), flavor.as_deref()).await;
    }
    if let JiraCommand::Preview { source } = &args.command {
        let path = args
            .config
            .as_deref()
            .ok_or("preview needs --config FILE with `jira:` and `sources:` sections")?;
        let config = crate::config::OperatorConfig::load(Some(path)).map_err(|e| e.to_string())?;
        print!("{}", preview_sources(&config, source.as_deref()).await?);
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = load_settings(args.config.as_deref())?;
    let client = JiraClient::new(&cfg).map_err(|e| e.to_string())?;
    match args.command {
        JiraCommand::Preview { .. } => Ok(ExitCode::SUCCESS),
        JiraCommand::Check { project } => check(&client, project.or(cfg.project.clone())).await,
        JiraCommand::Search { jql } => {
            let mut pages = std::pin::pin!(client.search_pages(&jql, &["summary", "status"]));
            let mut n = 0usize;
            while let Some(page) = pages.next().await {
                for issue in page.map_err(|e| e.to_string())? {
                    println!(
                        "{}\t{}\t{}",
                        issue.key,
                        issue.status_name().unwrap_or("?"),
                        issue.summary()
                    );
                    n += 1;
                }
            }
            eprintln!("{n} issue(s)");
            Ok(ExitCode::SUCCESS)
        }
        JiraCommand::Transitions { key } => {
            let list = client.transitions(&key).await.map_err(|e| e.to_string())?;
            if list.is_empty() {
                eprintln!(
                    "{key}: no transition is available now (or the bot may not transition it)"
                );
            }
            for t in list {
                let (to, cat) =
                    t.to.as_ref()
                        .map(|to| {
                            (
                                to.name.as_str(),
                                to.status_category
                                    .as_ref()
                                    .and_then(|c| c.key.as_deref())
                                    .unwrap_or("?"),
                            )
                        })
                        .unwrap_or(("?", "?"));
                println!("{}\t{}\t→ {} ({})", t.id, t.name, to, cat);
            }
            Ok(ExitCode::SUCCESS)
        }
        JiraCommand::Sim { .. } => Ok(ExitCode::SUCCESS),
    }
}

async fn check(client: &JiraClient, project: Option<String>) -> Result<ExitCode, String> {
    println!(
        "Jira: {} ({:?}, REST v{})",
        client.base_url(),
        client.flavor(),
        client.flavor().api_version()
    );
    let me = client
        .myself()
        .await
        .map_err(|e| format!("authentication failed: {e}"))?;
    println!("authenticated as {}", me.label());
    let Some(project) = project else {
        println!(
            "no project given (--project, jira.project or JIRA_PROJECT): permissions not checked"
        );
        return Ok(ExitCode::SUCCESS);
    };
    let perms = client
        .my_permissions(&project, CHECKED_PERMISSIONS)
        .await
        .map_err(|e| e.to_string())?;
    let mut ok = true;
    for p in CHECKED_PERMISSIONS {
        let have = perms.get(*p).copied().unwrap_or(false);
        let required = *p == "BROWSE_PROJECTS" || *p == "TRANSITION_ISSUES";
        println!(
            "  {} {p}{}",
            if have { "ok  " } else { "MISSING" },
            if required { " (required)" } else { "" }
        );
        ok &= have || !required;
    }
    if ok {
        println!("project {project}: ready");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("project {project}: the bot lacks a required permission");
        Ok(ExitCode::FAILURE)
    }
}

/// Reads a seed file (YAML or JSON); unknown keys are errors naming their path.
pub fn read_seed(path: &Path) -> Result<recac_jira_sim::Seed, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tree: serde_json::Value = if text.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    };
    serde_path_to_error::deserialize(tree)
        .map_err(|e| format!("{}: at `{}`: {}", path.display(), e.path(), e.inner()))
}

async fn run_sim(
    addr: SocketAddr,
    seed: Option<&Path>,
    flavor: Option<&str>,
) -> Result<ExitCode, String> {
    let mut seed = match seed {
        Some(p) => read_seed(p)?,
        None => recac_jira_sim::Seed::default(),
    };
    if let Some(f) = flavor {
        seed.flavor = match Flavor::parse(f) {
            Some(Flavor::Cloud) => recac_jira_sim::SimFlavor::Cloud,
            Some(Flavor::Datacenter) => recac_jira_sim::SimFlavor::Datacenter,
            None => return Err(format!("--flavor {f:?}: expected `cloud` or `datacenter`")),
        };
    }
    let default_users = seed.users.is_empty();
    let flavor = seed.flavor;
    let sim = recac_jira_sim::JiraSim::bind(addr, seed)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("Jira simulator ({flavor:?}) listening on {}", sim.url());
    if default_users {
        let flavor_name = if flavor == recac_jira_sim::SimFlavor::Cloud {
            "cloud"
        } else {
            "datacenter"
        };
        println!("  JIRA_URL={} JIRA_FLAVOR={flavor_name}", sim.url());
        match flavor {
            recac_jira_sim::SimFlavor::Cloud => println!(
                "  JIRA_EMAIL={} JIRA_API_TOKEN={}   (simulator-only credentials)",
                recac_jira_sim::BOT_EMAIL,
                recac_jira_sim::BOT_TOKEN
            ),
            recac_jira_sim::SimFlavor::Datacenter => {
                println!(
                    "  JIRA_PAT={}   (simulator-only credentials)",
                    recac_jira_sim::BOT_PAT
                )
            }
        }
    }
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    eprintln!("stopping; {} call(s) served", sim.calls().len());
    Ok(ExitCode::SUCCESS)
}

/// What the sources of `config` would do now (`only`: one source), as text: one line per
/// ticket, then the YAML of each AgentTask that would be created. Reads Jira and, when a
/// cluster is reachable, the existing AgentTasks; writes nothing anywhere.
pub async fn preview_sources(
    config: &crate::config::OperatorConfig,
    only: Option<&str>,
) -> Result<String, String> {
    use kube::api::{Api, ListParams};
    let jira = config
        .jira
        .as_ref()
        .ok_or("the configuration has no `jira:` section")?;
    let sources: Vec<recac_source::SourceConfig> = config
        .sources
        .iter()
        .filter(|s| only.is_none_or(|name| s.name == name))
        .cloned()
        .collect();
    if sources.is_empty() {
        return Err(match only {
            Some(name) => format!("no source named {name:?} in the configuration"),
            None => "the configuration has no `sources:`".into(),
        });
    }
    let client = JiraClient::new(jira).map_err(|e| e.to_string())?;
    let mut tasks = Vec::new();
    match kube::Client::try_default().await {
        Ok(kube_client) => {
            let mut namespaces: Vec<&str> = sources.iter().map(|s| s.namespace.as_str()).collect();
            namespaces.sort_unstable();
            namespaces.dedup();
            for ns in namespaces {
                let api: Api<recac_api::AgentTask> = Api::namespaced(kube_client.clone(), ns);
                match api
                    .list(&ListParams::default().labels("recac.io/source"))
                    .await
                {
                    Ok(list) => tasks.extend(list.items),
                    Err(e) => eprintln!(
                        "warning: cannot list AgentTasks in {ns} ({e}); existing runs are not taken into account"
                    ),
                }
            }
        }
        Err(e) => eprintln!(
            "warning: no Kubernetes connection ({e}); existing runs are not taken into account"
        ),
    }
    let entries = recac_source::preview::preview(&client, &sources, &tasks)
        .await
        .map_err(|e| e.to_string())?;
    Ok(recac_source::preview::render(&entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_config_file_name_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "jira:\n  url: https://example.atlassian.net\n  project: OPS\n",
        )
        .unwrap();
        let cfg = load_settings(Some(&path)).unwrap();
        assert_eq!(cfg.project.as_deref(), Some("OPS"));
        std::fs::write(
            &path,
            "jira:\n  url: https://example.atlassian.net\n  tokn: x\n",
        )
        .unwrap();
        let err = load_settings(Some(&path)).unwrap_err();
        assert!(err.contains("jira") && err.contains("tokn"), "{err}");
        std::fs::write(&path, "jira:\n  url: http://jira.example.com\n").unwrap();
        let err = load_settings(Some(&path)).unwrap_err();
        assert!(err.contains("jira.url"), "{err}");
        std::fs::write(&path, "{}\n").unwrap();
        assert!(
            load_settings(Some(&path))
                .unwrap_err()
                .contains("no `jira:` section")
        );
    }

    #[test]
    fn seed_file_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.yaml");
        std::fs::write(
            &path,
            "flavor: datacenter\nprojects:\n  - key: OPS\nissues:\n  - project: OPS\n    summary: Hello\n    labels: [recac-agent]\n",
        )
        .unwrap();
        let seed = read_seed(&path).unwrap();
        assert_eq!(seed.issues.len(), 1);
        std::fs::write(&path, "issues:\n  - project: OPS\n    sumary: x\n").unwrap();
        let err = read_seed(&path).unwrap_err();
        assert!(err.contains("issues[0]") && err.contains("sumary"), "{err}");
    }
}
