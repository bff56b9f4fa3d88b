//! Reading a ticket's comments for commands and acting on them (the I/O around
//! [`crate::commands`], whose docs say what a command is and why each acts once).
//!
//! The source's poll finds the tickets to read: its search also returns this source's
//! tickets updated since the previous poll ([`crate::query::search_jql`]), so a ticket at
//! rest costs no request; a ticket that changed costs one comments read.

use std::collections::{BTreeMap, HashMap};

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use recac_api::{AgentTask, Approval, TaskPhase, annotations};
use recac_jira::{JiraClient, User};
use recac_runtime::Cache;
use serde_json::json;
use tracing::{info, warn};

use crate::commands::{self, Act, CommentFacts, EarlierRun, RunFacts, RunRequest};
use crate::config::SourceConfig;
use crate::controller::SourceError;
use crate::decide::{self, RUN_LABEL, TICKET_LABEL, TRIGGER_ANNOTATION, TaskView};

/// What acting on one ticket's comments needs.
pub struct Conversation<'a> {
    pub client: &'a Client,
    pub jira: &'a JiraClient,
    pub tasks: &'a Cache<AgentTask>,
    pub source: &'a SourceConfig,
    pub bot: &'a User,
    /// The source's budget is spent (or unknown): commands start no run now; they are
    /// acted on once it is not.
    pub holds_runs: bool,
}

/// What reading one ticket's comments did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Acts taken.
    pub acts: usize,
    /// A command asks for a run that the spent budget holds: read the ticket again later.
    pub held_runs: bool,
}

/// The ways a comment can mention `bot`, as they read in a comment's plain text.
fn bot_mentions(bot: &User) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(name) = &bot.display_name {
        out.push(format!("@{name}"));
    }
    if let Some(id) = &bot.account_id {
        out.push(format!("[~accountid:{id}]"));
    }
    if let Some(name) = &bot.name {
        out.push(format!("[~{name}]"));
    }
    out
}

impl Conversation<'_> {
    /// The source's tasks among `views` (a ticket's, from the poll's index), oldest run
    /// first.
    fn runs(&self, views: &[TaskView]) -> Vec<std::sync::Arc<AgentTask>> {
        let store = self.tasks.store();
        let mut runs: Vec<_> = views
            .iter()
            .filter(|v| v.source == self.source.name)
            .filter_map(|v| store.get_named(Some(&v.namespace), &v.name))
            .collect();
        runs.sort_by_key(|t| run_of(t));
        runs
    }

    /// Reads `key`'s comments and acts on the commands among them; `views` are the
    /// ticket's tasks, `status` its status as the poll's search read it. Returns how many
    /// acts.
    pub async fn handle(
        &self,
        key: &str,
        views: &[TaskView],
        status: Option<&str>,
    ) -> Result<Handled, SourceError> {
        let runs = self.runs(views);
        if runs.is_empty() {
            return Ok(Handled::default());
        }
        let comments = self
            .jira
            .comments(key)
            .await
            .map_err(self.jira_err(format!("read comments of {key}")))?;
        let mentions = bot_mentions(self.bot);
        let facts: Vec<CommentFacts> = comments
            .iter()
            .map(|c| {
                let text = c.text();
                let by_bot = c
                    .author
                    .as_ref()
                    .is_some_and(|a| decide::same_user(a, self.bot));
                CommentFacts {
                    command: (!by_bot)
                        .then(|| commands::parse(&text, c.mentions(self.bot), &mentions))
                        .flatten(),
                    id: c.id.clone(),
                    author: c.author.clone(),
                    created: c.created_at(),
                    text,
                    by_bot,
                    transition: false,
                }
            })
            .collect();
        let run_facts: Vec<RunFacts> = runs.iter().map(|t| run_facts(t)).collect();
        let mut facts = facts;
        if let Some(moved) = self.approval_move(key, status, &run_facts).await? {
            facts.push(moved);
        }
        let allowed = self.allowed_authors(&facts).await?;
        let who_may = self.who_may();
        let acts = commands::plan(
            &facts,
            &run_facts,
            &|user: Option<&User>| {
                user.and_then(User::id)
                    .is_some_and(|id| allowed.get(id).copied().unwrap_or(false))
            },
            &who_may,
        );
        let mut acts = acts;
        let before = acts.len();
        if self.holds_runs {
            acts.retain(|a| !matches!(a, Act::Run { .. }));
        }
        let handled = Handled {
            acts: acts.len(),
            held_runs: acts.len() < before,
        };
        for act in acts {
            self.act(key, act, &runs, &facts).await?;
        }
        Ok(handled)
    }

    /// The ticket's latest move to the source's approval status, as an `approve` command,
    /// when the ticket is in that status and its latest run's plan waits for approval (only
    /// then is the changelog read).
    async fn approval_move(
        &self,
        key: &str,
        status: Option<&str>,
        runs: &[RunFacts],
    ) -> Result<Option<CommentFacts>, SourceError> {
        let Some(wanted) = self.source.approval.approved_status.as_deref() else {
            return Ok(None);
        };
        let waiting = runs
            .iter()
            .max_by_key(|r| r.run)
            .is_some_and(|r| r.awaiting_approval);
        if !waiting || !status.is_some_and(|s| s.eq_ignore_ascii_case(wanted)) {
            return Ok(None);
        }
        let (_, histories) = self
            .jira
            .issue_with_changelog(key, &["status"])
            .await
            .map_err(self.jira_err(format!("read the changelog of {key}")))?;
        Ok(histories
            .iter()
            .rev()
            .find(|h| {
                h.items.iter().any(|i| {
                    i.field == "status"
                        && i.to_string
                            .as_deref()
                            .is_some_and(|to| to.eq_ignore_ascii_case(wanted))
                })
            })
            .map(|h| CommentFacts {
                id: commands::transition_id(&h.id),
                author: h.author.clone(),
                created: h.created.as_deref().and_then(crate::plan::jira_time),
                text: String::new(),
                by_bot: h
                    .author
                    .as_ref()
                    .is_some_and(|a| decide::same_user(a, self.bot)),
                command: Some(commands::Command::Approve),
                transition: true,
            }))
    }

    /// Whether each author of a command may give commands (the source's trigger rule).
    async fn allowed_authors(
        &self,
        facts: &[CommentFacts],
    ) -> Result<HashMap<String, bool>, SourceError> {
        let s = self.source;
        let mut allowed = HashMap::new();
        for author in facts
            .iter()
            .filter(|f| f.command.is_some())
            .filter_map(|f| f.author.as_ref())
        {
            let Some(id) = author.id() else { continue };
            if allowed.contains_key(id) {
                continue;
            }
            let mut ok = decide::allowed(Some(author), &s.allowed_users, &[], &[]);
            if !ok && !s.allowed_groups.is_empty() {
                let groups = self
                    .jira
                    .user_groups(author)
                    .await
                    .map_err(self.jira_err(format!("read the groups of {}", author.label())))?;
                ok = decide::allowed(Some(author), &s.allowed_users, &s.allowed_groups, &groups);
            }
            allowed.insert(id.to_string(), ok);
        }
        Ok(allowed)
    }

    fn who_may(&self) -> String {
        let s = self.source;
        let mut who: Vec<String> = s.allowed_users.clone();
        who.extend(
            s.allowed_groups
                .iter()
                .map(|g| format!("members of group {g}")),
        );
        if who.is_empty() {
            "users who can edit the ticket".into()
        } else {
            who.join(", ")
        }
    }

    async fn act(
        &self,
        key: &str,
        act: Act,
        runs: &[std::sync::Arc<AgentTask>],
        facts: &[CommentFacts],
    ) -> Result<(), SourceError> {
        match act {
            Act::Reply { comment, text } => {
                self.jira
                    .add_comment(key, &text)
                    .await
                    .map_err(self.jira_err(format!("answer comment {comment} on {key}")))?;
                info!(ticket = key, comment, "answered a comment");
            }
            Act::Decide {
                task,
                decision,
                by,
                stop,
            } => {
                self.decide_plan(key, &task, decision, &by, stop.as_deref())
                    .await?;
            }
            Act::Stop { comment, by, tasks } => {
                let api: Api<AgentTask> =
                    Api::namespaced(self.client.clone(), &self.source.namespace);
                for name in tasks {
                    let patch = json!({"metadata": {"annotations": {
                        annotations::STOP: comment,
                        annotations::STOP_BY: by,
                    }}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(self.kube_err("mark to stop", &name))?;
                    info!(ticket = key, task = %name, comment, "stop asked on the ticket");
                }
            }
            Act::Run {
                comment,
                run,
                request,
            } => {
                let Some(latest) = runs.last() else {
                    return Ok(());
                };
                let original = runs
                    .first()
                    .and_then(|t| t.spec.prompt.clone())
                    .unwrap_or_default();
                let plan_of = |name: &str| {
                    runs.iter()
                        .find(|t| t.name_any() == name)
                        .and_then(|t| t.status.as_ref()?.plan.clone())
                };
                let max = self.source.max_prompt_chars;
                let prompt = match &request {
                    RunRequest::Retry => latest.spec.prompt.clone().unwrap_or_default(),
                    RunRequest::Implement { plan_task, author } => commands::implement_prompt(
                        &original,
                        &plan_of(plan_task).unwrap_or_default(),
                        author,
                        max,
                    ),
                    RunRequest::Replan {
                        plan_task,
                        author,
                        why,
                    } => commands::replan_prompt(
                        &original,
                        plan_of(plan_task).as_deref(),
                        author,
                        why.as_deref(),
                        max,
                    ),
                    RunRequest::FollowUp { text, author } => {
                        let earlier: Vec<EarlierRun> =
                            runs.iter().map(|t| earlier_run(t, facts)).collect();
                        commands::follow_up_prompt(&original, &earlier, author, text, max)
                    }
                };
                let mut task = next_run(latest, key, run, &comment, prompt);
                match &request {
                    RunRequest::Implement { .. } => task.spec.approval = None,
                    RunRequest::Replan { .. } => task.spec.approval = Some(Approval::Plan),
                    RunRequest::FollowUp { .. } | RunRequest::Retry => {}
                }
                let api: Api<AgentTask> =
                    Api::namespaced(self.client.clone(), &self.source.namespace);
                let name = task.name_any();
                match api.create(&PostParams::default(), &task).await {
                    Ok(_) => {
                        info!(ticket = key, task = %name, comment, "a comment started a new run")
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        // Created before a restart, or the name went to another command
                        // meanwhile: the next poll decides again from what exists.
                        let existing =
                            api.get(&name).await.map_err(self.kube_err("read", &name))?;
                        if existing.annotations().get(annotations::COMMAND) != Some(&comment) {
                            warn!(ticket = key, task = %name, comment, "run number taken; the next poll starts the command as a later run");
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(self.kube_err("create", &name)(e)),
                }
                // The new run answers the plan: record the decision on the plan's task (a
                // restart before this settles it from the new run; see `commands`).
                if let Some((plan_task, decision, by)) = request.decides() {
                    self.decide_plan(key, plan_task, decision, by, None).await?;
                }
            }
        }
        Ok(())
    }

    /// Annotates the plan of `task` with `decision` by `by` (and the comment that stopped
    /// it, if one did); the task controller then settles the task.
    async fn decide_plan(
        &self,
        key: &str,
        task: &str,
        decision: commands::Decision,
        by: &str,
        stop: Option<&str>,
    ) -> Result<(), SourceError> {
        let api: Api<AgentTask> = Api::namespaced(self.client.clone(), &self.source.namespace);
        let mut marks = serde_json::Map::new();
        marks.insert(annotations::APPROVAL.into(), decision.as_str().into());
        marks.insert(annotations::APPROVAL_BY.into(), by.into());
        if let Some(stop) = stop {
            marks.insert(annotations::STOP.into(), stop.into());
            marks.insert(annotations::STOP_BY.into(), by.into());
        }
        let patch = json!({"metadata": {"annotations": marks}});
        api.patch(task, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(self.kube_err("record the plan's decision on", task))?;
        info!(
            ticket = key,
            task,
            decision = decision.as_str(),
            by,
            "plan decided on the ticket"
        );
        Ok(())
    }

    fn jira_err(
        &self,
        action: impl Into<String>,
    ) -> impl FnOnce(recac_jira::JiraError) -> SourceError {
        let source_name = self.source.name.clone();
        let action = action.into();
        move |error| SourceError::Jira {
            source_name,
            action,
            error,
        }
    }

    fn kube_err(&self, action: &str, task: &str) -> impl FnOnce(kube::Error) -> SourceError {
        let (source_name, action, task) = (
            self.source.name.clone(),
            action.to_string(),
            task.to_string(),
        );
        move |error| SourceError::Kube {
            source_name,
            action,
            task,
            error,
        }
    }
}

fn run_of(task: &AgentTask) -> u32 {
    task.labels()
        .get(RUN_LABEL)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn run_facts(task: &AgentTask) -> RunFacts {
    let annotation = |key: &str| task.annotations().get(key).cloned();
    RunFacts {
        name: task.name_any(),
        run: run_of(task),
        finished: task
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(TaskPhase::is_finished),
        created: task.creation_timestamp().map(|t| t.0),
        command: annotation(annotations::COMMAND),
        stop: annotation(annotations::STOP),
        planning: task.spec.approval == Some(Approval::Plan),
        awaiting_approval: task.status.as_ref().and_then(|s| s.phase)
            == Some(TaskPhase::AwaitingApproval)
            && annotation(annotations::APPROVAL).is_none(),
    }
}

/// An earlier run as a follow-up's prompt tells it: the follow-up that started it, if
/// one did, and its outcome.
fn earlier_run(task: &AgentTask, facts: &[CommentFacts]) -> EarlierRun {
    let request = task
        .annotations()
        .get(annotations::COMMAND)
        .and_then(|id| facts.iter().find(|f| &f.id == id))
        .and_then(|f| match &f.command {
            Some(commands::Command::FollowUp(text)) => Some(text.clone()),
            _ => None,
        });
    EarlierRun {
        run: run_of(task),
        request,
        outcome: task.status.as_ref().and_then(|s| s.message.clone()),
    }
}

/// Run `run` of the ticket: the latest run's spec with a new prompt, on the branch the
/// earlier runs pushed to, already claimed (the ticket is), annotated with the comment.
fn next_run(latest: &AgentTask, key: &str, run: u32, comment: &str, prompt: String) -> AgentTask {
    let mut spec = latest.spec.clone();
    spec.prompt = Some(prompt);
    spec.suspend = false;
    if spec.repository.branch.is_none() {
        spec.repository.branch = latest.status.as_ref().and_then(|s| s.branch.clone());
    }
    let mut labels: BTreeMap<String, String> = latest.labels().clone();
    labels.insert(RUN_LABEL.to_string(), run.to_string());
    labels.insert(TICKET_LABEL.to_string(), key.to_string());
    let mut annotations_out =
        BTreeMap::from([(annotations::COMMAND.to_string(), comment.to_string())]);
    if let Some(trigger) = latest.annotations().get(TRIGGER_ANNOTATION) {
        annotations_out.insert(TRIGGER_ANNOTATION.to_string(), trigger.clone());
    }
    let mut task = AgentTask::new(&crate::task::task_name(key, run), spec);
    task.metadata.namespace = latest.namespace();
    task.metadata.labels = Some(labels);
    task.metadata.annotations = Some(annotations_out);
    task
}
