//! What the sources would do now, computed with reads only: `recac jira preview` and
//! `recac orchestrate --dry-run` print it and write nothing to Jira or Kubernetes.

use std::collections::HashMap;

use futures::TryStreamExt;
use kube::ResourceExt;
use recac_api::AgentTask;
use recac_jira::{JiraClient, JiraError};

use crate::config::SourceConfig;
use crate::decide::TaskView;
use crate::plan::{self, Verdict};
use crate::query;
use crate::task;

/// What would happen to one ticket.
#[derive(Debug)]
pub struct Entry {
    pub source: String,
    pub key: String,
    /// `claim`, `comment` or `skip`.
    pub action: &'static str,
    /// Why (for comment and skip).
    pub reason: Option<String>,
    pub repository: Option<String>,
    /// The AgentTask that would be created, as YAML.
    pub task_yaml: Option<String>,
}

/// Evaluates every ticket of every source against the existing `tasks`.
pub async fn preview(
    jira: &JiraClient,
    sources: &[SourceConfig],
    tasks: &[AgentTask],
) -> Result<Vec<Entry>, JiraError> {
    let mut index: HashMap<String, Vec<TaskView>> = HashMap::new();
    for t in tasks {
        if let (Some(view), Some(key)) = (task::view(t), task::ticket_of(t)) {
            index.entry(key.to_string()).or_default().push(view);
        }
    }
    let bot = jira.myself().await?;
    let mut out = Vec::new();
    for source in sources {
        let jql = query::search_jql(source, None);
        let fields = plan::search_fields(source);
        let pages: Vec<Vec<recac_jira::Issue>> =
            jira.search_pages(&jql, &fields).try_collect().await?;
        for issue in pages.into_iter().flatten() {
            let views = index.get(&issue.key).cloned().unwrap_or_default();
            let verdict = plan::evaluate(jira, source, &issue, &views, &bot).await?;
            let base = |action, reason: Option<String>| Entry {
                source: source.name.clone(),
                key: issue.key.clone(),
                action,
                reason,
                repository: None,
                task_yaml: None,
            };
            out.push(match verdict {
                Verdict::Skip(reason) => base("skip", Some(reason.as_str().into())),
                Verdict::Tell { reason, text, .. } => {
                    base("comment", Some(format!("{}: {text}", reason.as_str())))
                }
                Verdict::Take(take) => {
                    let mut entry = base("claim", None);
                    entry.repository = Some(format!(
                        "{} (from {})",
                        take.task.spec.repository.url,
                        take.repository_origin.as_str()
                    ));
                    entry.task_yaml =
                        Some(serde_saphyr::to_string(&take.task).unwrap_or_else(|e| {
                            format!("# cannot render {}: {e}\n", take.task.name_any())
                        }));
                    entry
                }
            });
        }
    }
    Ok(out)
}

/// The preview as text for people: one line per ticket, then each task's YAML.
pub fn render(entries: &[Entry]) -> String {
    let mut text = String::new();
    for e in entries {
        text.push_str(&format!("{} {} {}", e.source, e.key, e.action));
        if let Some(repo) = &e.repository {
            text.push_str(&format!(" repository={repo}"));
        }
        if let Some(reason) = &e.reason {
            text.push_str(&format!(" ({reason})"));
        }
        text.push('\n');
    }
    for e in entries {
        if let Some(yaml) = &e.task_yaml {
            text.push_str("---\n");
            text.push_str(yaml);
        }
    }
    if entries.is_empty() {
        text.push_str("no tickets match\n");
    }
    text
}
