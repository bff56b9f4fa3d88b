//! Observe and decide for one ticket, with reads only: what the controller will do with
//! it, and what `recac jira preview` / `--dry-run` show.

use recac_api::AgentTask;
use recac_jira::{ChangeHistory, Issue, JiraClient, JiraError, Transition, User};

use crate::config::SourceConfig;
use crate::decide::{self, Criteria, SkipReason, TaskView, Trigger};
use crate::prompt;
use crate::repo::{self, Resolution};
use crate::task::{self, NewTask};

/// Fields the search asks for (plus the source's custom field).
pub const SEARCH_FIELDS: &[&str] = &[
    "summary",
    "description",
    "status",
    "labels",
    "assignee",
    "reporter",
    "project",
    "components",
    "created",
    "updated",
];

/// Fields the claim reads fresh.
pub const CLAIM_FIELDS: &[&str] = &["status", "assignee", "labels", "reporter", "updated"];

/// The marker that makes a comment of this source findable, so it is never posted twice.
pub fn marker(reason: SkipReason) -> String {
    format!("[recac:{}]", reason.as_str())
}

/// What to do with one ticket.
#[derive(Debug)]
pub enum Verdict {
    /// Nothing now.
    Skip(SkipReason),
    /// Tell the ticket why nothing runs: one comment (found by its marker) and a label.
    Tell {
        reason: SkipReason,
        label: String,
        text: String,
    },
    /// Create this task and claim the ticket.
    Take(Box<Take>),
}

/// A ticket to take.
#[derive(Debug)]
pub struct Take {
    pub task: AgentTask,
    pub trigger: Trigger,
    /// When the trigger happened (Jira's time), for the latency metric.
    pub triggered_at: Option<String>,
    pub repository_origin: repo::Origin,
    /// The ticket as read just now, with its changelog (the claim starts from it).
    pub issue: Issue,
    pub histories: Vec<ChangeHistory>,
    /// The transitions the ticket offered in that same read (`None`: not expanded).
    pub transitions: Option<Vec<Transition>>,
}

/// The matching rule the changelog is read against.
pub fn criteria(source: &SourceConfig) -> Criteria {
    Criteria {
        label: source.label.clone(),
        status: true,
    }
}

/// Every field the search requests for `source`.
pub fn search_fields(source: &SourceConfig) -> Vec<&str> {
    let mut fields = SEARCH_FIELDS.to_vec();
    if let Some(field) = &source.repository.custom_field {
        fields.push(field.as_str());
    }
    fields
}

/// The ticket's browse URL.
pub fn browse_url(jira: &JiraClient, key: &str) -> String {
    format!(
        "{}/browse/{key}",
        jira.base_url().as_str().trim_end_matches('/')
    )
}

/// Decides what to do with `issue` (from the search) given the tasks that exist for it.
/// `bot` is the user recac acts as. Reads the changelog (and the trigger's groups when the source restricts by group);
/// writes nothing.
pub async fn evaluate(
    jira: &JiraClient,
    source: &SourceConfig,
    issue: &Issue,
    tasks: &[TaskView],
    bot: &User,
) -> Result<Verdict, JiraError> {
    let key = issue.key.as_str();
    if !task::valid_key(key) {
        return Ok(Verdict::Skip(SkipReason::InvalidKey));
    }
    if let Some(reason) = decide::precheck(tasks, &source.name) {
        return Ok(Verdict::Skip(reason));
    }
    let read = jira.issue_for_claim(key, CLAIM_FIELDS).await?;
    let (fresh, histories, transitions) = (read.issue, read.histories, read.transitions);
    let reporter: Option<User> = fresh
        .raw_fields
        .get("reporter")
        .and_then(|r| serde_json::from_value(r.clone()).ok());
    let trigger = decide::trigger(&histories, &criteria(source), reporter.as_ref(), Some(bot));
    let run = match decide::plan_ticket(tasks, &source.name, &trigger.id) {
        Ok(run) => run,
        Err(reason) => return Ok(Verdict::Skip(reason)),
    };
    if source.restricts_triggers() {
        let mut groups = Vec::new();
        let listed = decide::allowed(trigger.actor.as_ref(), &source.allowed_users, &[], &[]);
        if !listed
            && !source.allowed_groups.is_empty()
            && let Some(actor) = &trigger.actor
        {
            groups = jira.user_groups(actor).await?;
        }
        if !decide::allowed(
            trigger.actor.as_ref(),
            &source.allowed_users,
            &source.allowed_groups,
            &groups,
        ) {
            let who = trigger
                .actor
                .as_ref()
                .map(User::label)
                .unwrap_or_else(|| "an unknown user".into());
            let mut allowed: Vec<String> = source.allowed_users.clone();
            allowed.extend(
                source
                    .allowed_groups
                    .iter()
                    .map(|g| format!("members of group {g}")),
            );
            return Ok(Verdict::Tell {
                reason: SkipReason::NotAllowed,
                label: source.skip_labels.not_allowed.clone(),
                text: format!(
                    "recac did not start work on this ticket: it was made ready by {who}, who may not start agent runs from this project. Work can be started by: {}. {}",
                    allowed.join(", "),
                    marker(SkipReason::NotAllowed)
                ),
            });
        }
    }
    let description = prompt::description_text(issue.fields.description.as_ref());
    let project = issue
        .fields
        .project
        .as_ref()
        .map(|p| p.key.clone())
        .or_else(|| key.split_once('-').map(|(p, _)| p.to_string()))
        .unwrap_or_default();
    let facts = repo::TicketRepoFacts {
        description: &description,
        project: &project,
        components: repo::components(&issue.raw_fields),
        raw_fields: &issue.raw_fields,
    };
    let (url, origin) = match repo::resolve(&source.repository, &facts) {
        Resolution::Found { url, origin } => (url, origin),
        Resolution::Missing => {
            return Ok(Verdict::Tell {
                reason: SkipReason::NoRepository,
                label: source.skip_labels.no_repository.clone(),
                text: format!(
                    "recac cannot start work on this ticket: it does not say which repository to work in. Add a line `Repo: https://host/org/repo.git` to the description. {}",
                    marker(SkipReason::NoRepository)
                ),
            });
        }
        Resolution::Rejected { origin, why, .. } => {
            let _ = why;
            let rule = match source.repository.hosts_for(false) {
                Some([]) => "this source accepts no repository from ticket text; ask its administrators to name one in its configuration".to_string(),
                Some(hosts) => format!(
                    "it must be an https:// (without credentials), ssh:// or git@host:path clone URL on one of: {}",
                    hosts.join(", ")
                ),
                None => "it must be an https:// (without credentials), ssh:// or git@host:path clone URL"
                    .to_string(),
            };
            return Ok(Verdict::Tell {
                reason: SkipReason::RepositoryRejected,
                label: source.skip_labels.no_repository.clone(),
                text: format!(
                    "recac cannot start work on this ticket: the repository given in its {} was refused; {rule}. Fix the `Repo:` line in the description. {}",
                    origin.as_str(),
                    marker(SkipReason::NoRepository)
                ),
            });
        }
    };
    let browse = browse_url(jira, key);
    let prompt = prompt::build(
        key,
        &browse,
        issue.summary(),
        &description,
        source.max_prompt_chars,
    );
    let triggered_at = match trigger.id.as_str() {
        decide::CREATED => issue.fields.created.clone(),
        id => histories
            .iter()
            .find(|h| h.id == id)
            .and_then(|h| h.created.clone()),
    };
    let task = task::build(NewTask {
        source,
        key,
        url: &browse,
        run,
        trigger: &trigger.id,
        prompt,
        repository: url,
    });
    Ok(Verdict::Take(Box::new(Take {
        task,
        trigger,
        triggered_at,
        repository_origin: origin,
        issue: fresh,
        histories,
        transitions,
    })))
}

/// Parses Jira's timestamp (`2026-11-26T10:00:00.000+0000`).
pub fn jira_time(text: &str) -> Option<jiff::Timestamp> {
    jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%S%.f%z", text)
        .ok()
        .and_then(|t| t.to_timestamp().ok())
        .or_else(|| text.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jira_times_parse() {
        assert!(jira_time("2026-11-26T10:00:00.000+0000").is_some());
        assert!(jira_time("2026-11-26T10:00:00.123+0100").is_some());
        assert!(jira_time("nope").is_none());
    }
}
