//! The `recac start` flow: workspace, branch, work, tests, commit, push, pull request, report.
//! A planning run (`RECAC_MODE=plan`) stops after the engine: it reports the plan the engine
//! wrote and never commits or pushes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use recac_api::agent_contract::{
    AgentResult, CutShort, ModelUsage, Outcome, PartialWork, TokenUsage,
};
use recac_api::repo_host::{HostScope, RepoLocation, Transport, render_list};

use crate::branch::{self, BranchPlan};
use crate::budget::{self, Budget};
use crate::cut;
use crate::detect::{self, RepoFiles};
use crate::engine::{
    self, EngineReport, EngineStatus, Meter, Tail, llm::LlmClient, tools::Toolbox, usage,
};
use crate::environment::{self, FsError};
use crate::git::{Git, GitCredential, GitError, GitErrorKind, Identity};
use crate::github::{self, GitHub, GitHubRepo, PullRequest};
use crate::plan;
use crate::process::{self, CommandSpec};
use crate::redact::Redactor;
use crate::report::exit_code_for;
use crate::settings::{EngineSettings, LlmSettings, Mode, PullRequestMode, Settings, vars};
use crate::toolchain::{self, Finder, MissingTool, Problem, TestCommand};
use tokio_util::sync::CancellationToken;

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOutput {
    pub result: AgentResult,
    pub exit_code: i32,
    /// The checkout the work happened in.
    pub workspace: Option<PathBuf>,
}

/// Why the flow stopped early.
struct Stop {
    outcome: Outcome,
    message: String,
    /// Why the work was cut short, with [`Outcome::Partial`].
    partial: Option<PartialWork>,
}

impl Stop {
    fn gave_up(message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::GaveUp,
            message: message.into(),
            partial: None,
        }
    }
    fn failed(message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failed,
            message: message.into(),
            partial: None,
        }
    }
    /// The work was cut short by `cause`; `done` and `left` say what it did and what is left.
    fn partial(cause: CutShort, done: String, left: String, message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Partial,
            message: message.into(),
            partial: Some(PartialWork {
                cause,
                done: Some(done),
                left: Some(left),
            }),
        }
    }
}

/// When the work ends: the deadline less its margin.
#[derive(Clone, Copy, Debug)]
struct WorkEnd {
    deadline: SystemTime,
    at: tokio::time::Instant,
}

impl WorkEnd {
    fn of(settings: &Settings) -> Option<Self> {
        let deadline = settings.deadline?;
        let left = cut::time_left(deadline, settings.deadline_margin, SystemTime::now());
        Some(Self {
            deadline,
            at: tokio::time::Instant::now() + left,
        })
    }
}

/// What ends the work from outside: SIGTERM (`stop`) and the deadline (`end`).
struct Halt<'a> {
    stop: &'a CancellationToken,
    end: Option<WorkEnd>,
}

impl Halt<'_> {
    /// Whether the deadline, less its margin, has passed.
    fn deadline_passed(&self) -> bool {
        self.end
            .is_some_and(|e| tokio::time::Instant::now() >= e.at)
    }

    /// Resolves when the deadline, less its margin, passes (never without a deadline).
    async fn deadline(&self) {
        match self.end {
            Some(end) => tokio::time::sleep_until(end.at).await,
            None => std::future::pending().await,
        }
    }

    /// Whole seconds left before the deadline itself.
    fn seconds_before_deadline(&self) -> u64 {
        self.end
            .map_or(0, |e| cut::seconds_before(e.deadline, SystemTime::now()))
    }

    /// The engine's report when the deadline ended its work.
    fn deadline_report(&self, usage: TokenUsage) -> EngineReport {
        EngineReport {
            status: EngineStatus::CutShort {
                cause: CutShort::Deadline,
                reason: format!(
                    "the deadline is near: the work ended {} s before it ({} less {})",
                    self.seconds_before_deadline(),
                    vars::DEADLINE,
                    vars::DEADLINE_MARGIN_SECONDS
                ),
            },
            summary: String::new(),
            usage,
            iterations: 0,
            reported: None,
        }
    }
}

impl From<GitError> for Stop {
    fn from(e: GitError) -> Self {
        if e.kind.is_permanent() {
            Stop::gave_up(e.to_string())
        } else {
            Stop::failed(e.to_string())
        }
    }
}

impl From<FsError> for Stop {
    fn from(e: FsError) -> Self {
        if e.is_environment() {
            Stop::gave_up(e.to_string())
        } else {
            Stop::failed(e.to_string())
        }
    }
}

/// Why the git token will not be sent for `repo_url`, when it will not (pure).
pub fn credential_out_of_scope(repo_url: &str, scopes: &[HostScope]) -> Option<String> {
    let location = RepoLocation::of(repo_url)?;
    let listed = if scopes.is_empty() {
        "none".to_string()
    } else {
        render_list(scopes)
    };
    match location.transport {
        Transport::Ssh => None,
        Transport::Http => Some(format!(
            "the git token is never sent over plain http ({}); use https",
            location.host
        )),
        Transport::Https if location.in_scope(scopes) => None,
        Transport::Https => Some(format!(
            "the git token is not sent to {} (it is for: {listed}; set {} to add a host)",
            location.host,
            recac_api::agent_contract::env::GIT_CREDENTIAL_HOSTS
        )),
    }
}

/// A refused or missing credential's message, with why the token was not offered.
fn with_hint(mut e: GitError, hint: Option<&str>) -> GitError {
    if e.kind == GitErrorKind::AuthRefused
        && let Some(hint) = hint
    {
        e.message = format!("{}; {hint}", e.message);
    }
    e
}

/// Why the work ended early when the pod was told to stop.
const STOPPED: &str =
    "the pod was told to stop (SIGTERM: the task was suspended, deleted or hit its deadline)";
const STOPPED_BEFORE_WORK: &str =
    "the pod was told to stop (SIGTERM) before the work started; nothing was changed";
const STOPPED_BEFORE_PLANNING: &str =
    "the pod was told to stop (SIGTERM) before the planning started";

/// What to do with the branch after the work (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publish {
    /// The branch holds nothing beyond the base: nothing to push.
    NothingToPush,
    /// The remote branch already has HEAD (e.g. pushed by an earlier attempt).
    AlreadyPushed,
    /// Push HEAD.
    Push,
}

/// Decides whether to push: `ahead` is how many commits HEAD has beyond the base.
pub fn decide_publish(ahead: u64, head: &str, remote_head: Option<&str>) -> Publish {
    if ahead == 0 {
        Publish::NothingToPush
    } else if remote_head == Some(head) {
        Publish::AlreadyPushed
    } else {
        Publish::Push
    }
}

/// The commit message: the ticket first, then the summary.
pub fn commit_message(
    ticket: Option<&str>,
    summary: &str,
    task: Option<&str>,
    attempt: u32,
    wip: bool,
) -> String {
    let summary = summary.trim();
    let first = summary.lines().next().unwrap_or("").trim();
    let first = if first.is_empty() {
        "changes by recac"
    } else {
        first
    };
    let mut title = String::new();
    if wip {
        title.push_str("WIP: ");
    }
    if let Some(t) = ticket {
        title.push_str(t);
        title.push_str(": ");
    } else {
        title.push_str("recac: ");
    }
    title.push_str(first);
    let title: String = title.chars().take(100).collect();
    let mut msg = format!("{title}\n");
    if summary.lines().count() > 1 || summary.len() > first.len() {
        msg.push_str(&format!("\n{summary}\n"));
    }
    msg.push('\n');
    if let Some(t) = ticket {
        msg.push_str(&format!("Ticket: {t}\n"));
    }
    if let Some(task) = task {
        msg.push_str(&format!("Recac-Task: {task} (attempt {attempt})\n"));
    }
    msg
}

/// Runs the whole flow; never panics on bad input, always returns a result.
pub async fn run(settings: &Settings, redactor: &Redactor) -> RunOutput {
    run_until(settings, redactor, CancellationToken::new()).await
}

/// Runs the whole flow until `stop` is cancelled (the pod is being stopped: SIGTERM). A stop
/// during the work ends the model loop and its running command (with its process group),
/// commits what the work left, pushes it to the task's branch as work in progress and
/// reports a retryable failure saying so; a stop during the tests skips them. Clone, commit
/// and push are short and always run to their end.
///
/// The deadline (`RECAC_DEADLINE` less `RECAC_DEADLINE_MARGIN_SECONDS`) ends the work (or the
/// tests) the same way, and so does a stop that comes after it; the built-in engine's budget
/// (`RECAC_BUDGET_*`) ends its work too. Either way the work in progress is pushed and the
/// result is [`Outcome::Partial`], with [`PartialWork`] saying what cut it short, what was
/// done and what is left.
///
/// A planning run ([`Mode::Plan`]) checks the branch out as the work would, then lets the
/// engine write a plan and reports it (outcome `planned`); it never commits or pushes. A stop
/// during it is a retryable failure.
pub async fn run_until(
    settings: &Settings,
    redactor: &Redactor,
    stop: CancellationToken,
) -> RunOutput {
    let redactor = redactor.with_secrets(settings.secrets());
    let mut state = State {
        branch: None,
        commit: None,
        pull_request_url: None,
        tests_passed: None,
        usage: None,
        models: None,
        workspace: None,
        plan: None,
    };
    let halt = Halt {
        stop: &stop,
        end: WorkEnd::of(settings),
    };
    let budget = &settings.budget;
    match &settings.engine {
        EngineSettings::Builtin(_) if budget.cost.is_some() && budget.prices.is_none() => {
            tracing::warn!(
                "{} is set without {} and {}: the cost cannot be counted, only the token budgets stop the work",
                vars::BUDGET_COST,
                vars::PRICE_INPUT_PER_MILLION,
                vars::PRICE_OUTPUT_PER_MILLION
            );
        }
        EngineSettings::External(_) if budget.is_set() => {
            tracing::warn!(
                "an external agent CLI's spending cannot be stopped by the budget: only the deadline ({}) bounds it",
                vars::DEADLINE
            );
        }
        _ => {}
    }
    if let Some(end) = halt.end {
        tracing::info!(
            seconds_left = end
                .at
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs(),
            "the work ends {} s before the deadline",
            settings.deadline_margin.as_secs()
        );
    }
    let (outcome, summary, partial) = match flow(settings, &redactor, &mut state, &halt).await {
        Ok((outcome, summary)) => (outcome, summary, None),
        Err(stop) => (stop.outcome, stop.message, stop.partial),
    };
    let summary = redactor.redact(&summary);
    let partial = partial.map(|p| PartialWork {
        cause: p.cause,
        done: p.done.map(|t| redactor.redact(&t)),
        left: p.left.map(|t| redactor.redact(&t)),
    });
    let result = AgentResult {
        outcome,
        branch: state.branch,
        commit: state.commit,
        pull_request_url: state.pull_request_url,
        tests_passed: state.tests_passed,
        summary: (!summary.trim().is_empty()).then_some(summary),
        token_usage: state.usage,
        plan: state.plan,
        partial,
        usage: state.models,
        egress_blocked: Vec::new(),
    };
    RunOutput {
        exit_code: exit_code_for(&result),
        result,
        workspace: state.workspace,
    }
}

struct State {
    branch: Option<String>,
    commit: Option<String>,
    pull_request_url: Option<String>,
    tests_passed: Option<bool>,
    usage: Option<TokenUsage>,
    /// What each model cost (`None`: the engine reported nothing).
    models: Option<Vec<ModelUsage>>,
    workspace: Option<PathBuf>,
    /// A planning run's plan.
    plan: Option<String>,
}

/// The workspace folder: `RECAC_WORKSPACE` (created when absent, refused when not empty) or a
/// new temporary folder. Checked writable, so that a read-only or foreign folder is reported
/// as what it is (see [`environment`]) before anything else starts.
fn prepare_workspace(settings: &Settings) -> Result<PathBuf, Stop> {
    match &settings.workspace {
        Some(dir) => {
            let setting = Some(vars::WORKSPACE);
            let not_empty = || {
                Stop::gave_up(format!(
                    "{} ({}) must be an empty or absent directory",
                    vars::WORKSPACE,
                    dir.display()
                ))
            };
            if dir.exists() {
                if !dir.is_dir() {
                    return Err(not_empty());
                }
                let mut entries = std::fs::read_dir(dir)
                    .map_err(|e| FsError::new("read the workspace folder", dir, setting, e))?;
                if entries.next().is_some() {
                    return Err(not_empty());
                }
            } else {
                std::fs::create_dir_all(dir)
                    .map_err(|e| FsError::new("create the workspace folder", dir, setting, e))?;
            }
            environment::check_writable(dir, setting)?;
            Ok(dir.clone())
        }
        None => {
            let (tmp, setting) = environment::temp_dir();
            let holder = tempfile::Builder::new()
                .prefix("recac-workspace-")
                .tempdir_in(&tmp)
                .map_err(|e| FsError::new("create the workspace folder in", &tmp, setting, e))?;
            Ok(holder.keep().join("repo"))
        }
    }
}

async fn flow(
    settings: &Settings,
    redactor: &Redactor,
    state: &mut State,
    halt: &Halt<'_>,
) -> Result<(Outcome, String), Stop> {
    let checkout = check_out(settings, redactor, state).await?;
    match settings.mode {
        Mode::Plan => plan(settings, redactor, state, halt, &checkout).await,
        Mode::Work => work(settings, redactor, state, halt, checkout).await,
    }
}

/// The clone, on the task's branch.
struct Checkout {
    git: Git,
    dir: PathBuf,
    /// The branch new work starts from.
    base: String,
    /// The task's branch.
    branch: String,
    /// The base branch's commit on the remote.
    base_commit: String,
    /// The task's branch's commit on the remote, when it was there before the run.
    remote_head: Option<String>,
    /// Why the git token is not sent to the remote, when it is not.
    token_hint: Option<String>,
}

/// The workspace, the clone and the task's branch: an existing remote branch is fetched and
/// checked out (an earlier run's work), otherwise a local branch is made from the base.
async fn check_out(
    settings: &Settings,
    redactor: &Redactor,
    state: &mut State,
) -> Result<Checkout, Stop> {
    // 1. Workspace.
    let dir = prepare_workspace(settings)?;
    state.workspace = Some(dir.clone());
    let credential = settings.git_token.as_ref().map(|token| GitCredential {
        username: settings.git_username.clone(),
        token: token.clone(),
        scopes: settings.git_credential_hosts.clone(),
    });
    let token_hint = credential
        .as_ref()
        .and_then(|c| credential_out_of_scope(&settings.repo_url, &c.scopes));
    if let Some(hint) = &token_hint {
        tracing::warn!("{hint}");
    }
    // git's certificate bundle and the external engine's prompt go to the temporary folder
    // (so does an SSH key: see below).
    if settings.ca_bundle.is_some() || matches!(settings.engine, EngineSettings::External(_)) {
        environment::check_temp_dir()?;
    }
    let git = Git::new(
        &dir,
        credential.as_ref(),
        settings.ca_bundle.as_deref(),
        &settings.ssh,
        redactor.clone(),
    )
    .map_err(|e| {
        let message = format!("cannot set up git: {e}");
        if e.kind() == std::io::ErrorKind::InvalidInput {
            // A setting git needs is invalid.
            return Stop::gave_up(message);
        }
        match environment::environment_cause(&e) {
            // git's files (the certificate bundle, an SSH key) go to a temporary folder.
            Some(cause) => {
                let (tmp, setting) = environment::temp_dir();
                Stop::gave_up(format!(
                    "{message}: {cause} (git's certificate bundle and SSH key are written to a temporary folder in {}{}; not retried: another attempt would meet it again)",
                    tmp.display(),
                    setting.map(|s| format!(", {s}")).unwrap_or_default()
                ))
            }
            None => Stop::failed(message),
        }
    })?;
    tracing::info!(repo = %settings.repo_url, workspace = %dir.display(), "cloning");
    git.clone_repo(&settings.repo_url)
        .await
        .map_err(|e| with_hint(e, token_hint.as_deref()))?;

    // 2. Branch.
    let base = match &settings.base_branch {
        Some(b) => b.clone(),
        None => git.default_branch().await?.ok_or_else(|| {
            Stop::gave_up("the remote has no default branch (is it empty?); set RECAC_BASE_BRANCH")
        })?,
    };
    let wanted = settings.branch.clone().unwrap_or_else(|| {
        branch::default_branch_name(settings.ticket.as_deref(), &settings.prompt)
    });
    let branch_name = branch::sanitize(&wanted);
    if branch_name != wanted {
        tracing::warn!(given = %wanted, used = %branch_name, "branch name sanitised");
    }
    if branch_name == base {
        return Err(Stop::gave_up(format!(
            "the branch `{branch_name}` is the base branch; refusing to work on it"
        )));
    }
    state.branch = Some(branch_name.clone());
    let exists = git.remote_branch_exists(&branch_name).await?;
    let plan = branch::plan(&branch_name, &base, exists);
    tracing::info!(?plan, "branch");
    match &plan {
        BranchPlan::Continue { branch } => {
            git.fetch_branch(branch).await?;
            git.checkout(branch, branch).await?;
        }
        BranchPlan::Create { branch, base } => git.checkout(branch, base).await?,
    }
    let base_commit = git
        .rev_parse(&format!("refs/remotes/origin/{base}"))
        .await?;
    let start = git.rev_parse("HEAD").await?;
    Ok(Checkout {
        git,
        dir,
        base,
        branch: branch_name,
        base_commit,
        remote_head: exists.then_some(start),
        token_hint,
    })
}

/// What the engine is asked.
struct Ask<'a> {
    /// The built-in engine's system prompt.
    system: &'a str,
    prompt: &'a str,
    /// How much of an external engine's output is its summary.
    tail: Tail,
}

/// Runs the engine on `ask` in `dir`, until it ends, the deadline (less its margin) passes or
/// the pod is told to stop. At the deadline (or told to stop after it) the report says the
/// work was cut short by it; told to stop before, the report says it reached a limit,
/// [`STOPPED`]. Either way it has what the built-in engine spent so far.
async fn run_engine(
    settings: &Settings,
    redactor: &Redactor,
    dir: &Path,
    ask: Ask<'_>,
    halt: &Halt<'_>,
) -> Result<EngineReport, Stop> {
    let Ask {
        system,
        prompt,
        tail,
    } = ask;
    if halt.deadline_passed() {
        tracing::warn!("the deadline is near: the work does not start");
        return Ok(halt.deadline_report(TokenUsage::default()));
    }
    let meter = Meter::default();
    let work = async {
        Ok::<_, Stop>(match &settings.engine {
            EngineSettings::Builtin(llm) => {
                let client = LlmClient::new(llm.clone(), redactor.clone())
                    .map_err(|e| Stop::gave_up(e.to_string()))?;
                let toolbox = Toolbox::new(
                    dir,
                    settings.limits.command_timeout,
                    settings.limits.output_limit,
                    redactor.clone(),
                    settings.child_env.clone(),
                )
                .map_err(|e| {
                    Stop::from(FsError::new(
                        "open the workspace folder",
                        dir,
                        settings.workspace.is_some().then_some(vars::WORKSPACE),
                        e,
                    ))
                })?;
                engine::run_builtin(
                    &client,
                    &toolbox,
                    system,
                    prompt,
                    &settings.limits,
                    &settings.budget,
                    &meter,
                )
                .await
            }
            EngineSettings::External(ext) => {
                engine::run_external(
                    ext,
                    dir,
                    prompt,
                    settings.limits.max_duration,
                    redactor,
                    &settings.child_env,
                    tail,
                )
                .await
            }
        })
    };
    Ok(tokio::select! {
        report = work => report?,
        () = halt.deadline() => {
            tracing::warn!("the deadline is near: ending the engine");
            halt.deadline_report(meter.spent())
        }
        () = halt.stop.cancelled() => {
            if halt.deadline_passed() {
                tracing::warn!("told to stop after the deadline: ending the engine");
                halt.deadline_report(meter.spent())
            } else {
                tracing::warn!("told to stop: ending the engine");
                EngineReport {
                    status: EngineStatus::LimitReached(STOPPED.into()),
                    summary: String::new(),
                    usage: meter.spent(),
                    iterations: 0,
                    reported: None,
                }
            }
        }
    })
}

/// What the built-in engine's model cost: `spent`, priced when the prices are known.
pub fn builtin_usage(llm: &LlmSettings, budget: &Budget, spent: &TokenUsage) -> ModelUsage {
    let cost = budget.cost_of(spent);
    ModelUsage {
        provider: Some(
            match llm.provider {
                crate::settings::Provider::OpenAi => "openai",
                crate::settings::Provider::Anthropic => "anthropic",
            }
            .to_string(),
        ),
        model: llm.model.clone(),
        input_tokens: spent.input_tokens,
        output_tokens: spent.output_tokens,
        cost: cost.map(budget::format_micros),
        currency: cost.and(budget.currency.clone()),
    }
}

/// What an external engine reported it spent, priced when it gave no cost and the prices are
/// known.
fn priced(mut models: Vec<ModelUsage>, budget: &Budget) -> Vec<ModelUsage> {
    for model in models.iter_mut().filter(|m| m.cost.is_none()) {
        let spent = TokenUsage {
            input_tokens: model.input_tokens,
            output_tokens: model.output_tokens,
        };
        if let Some(cost) = budget.cost_of(&spent) {
            model.cost = Some(budget::format_micros(cost));
            model.currency = budget.currency.clone();
        }
    }
    models
}

/// Keeps what the engine spent: the built-in one counts it; an external one's is what it
/// reported, if anything.
fn record_usage(settings: &Settings, state: &mut State, report: &EngineReport) {
    match &settings.engine {
        EngineSettings::Builtin(llm) => {
            state.usage = Some(report.usage.clone());
            state.models = Some(vec![builtin_usage(llm, &settings.budget, &report.usage)]);
        }
        EngineSettings::External(_) => {
            if let Some(models) = &report.reported {
                state.usage = Some(usage::totals(models));
                state.models = Some(priced(models.clone(), &settings.budget));
            }
        }
    }
}

/// Why the run ends when the engine said it cannot do the task or failed (`None` otherwise).
fn engine_gave_out(report: &EngineReport) -> Option<Stop> {
    match &report.status {
        EngineStatus::Done | EngineStatus::LimitReached(_) | EngineStatus::CutShort { .. } => None,
        EngineStatus::CannotDo => Some(Stop::gave_up(if report.summary.is_empty() {
            "the engine declared it cannot do the task".to_string()
        } else {
            report.summary.clone()
        })),
        EngineStatus::Failed { permanent, message } => Some(if *permanent {
            Stop::gave_up(message.clone())
        } else {
            Stop::failed(message.clone())
        }),
    }
}

/// A planning run's summary.
const PLANNED: &str = "wrote a plan; nothing was committed or pushed";

/// Why a planning run ended without its plan.
fn plan_stopped(reason: &str) -> String {
    format!("stopped before the plan was written: {reason}")
}

/// A planning run after the checkout: the engine reads the repository and writes the plan.
/// Nothing is committed or pushed, whatever the engine did: what it changed stays in the
/// workspace, which is thrown away.
async fn plan(
    settings: &Settings,
    redactor: &Redactor,
    state: &mut State,
    halt: &Halt<'_>,
    checkout: &Checkout,
) -> Result<(Outcome, String), Stop> {
    if halt.stop.is_cancelled() && !halt.deadline_passed() {
        return Err(Stop::failed(plan_stopped(STOPPED_BEFORE_PLANNING)));
    }
    let prompt = plan::planning_prompt(&settings.prompt);
    let report = run_engine(
        settings,
        redactor,
        &checkout.dir,
        Ask {
            system: plan::SYSTEM_PROMPT,
            prompt: &prompt,
            tail: Tail::PLAN,
        },
        halt,
    )
    .await?;
    record_usage(settings, state, &report);
    tracing::info!(status = ?report.status, iterations = report.iterations, "planning ended");
    let plan = planned(&report, redactor)?;
    tracing::info!(branch = %checkout.branch, bytes = plan.len(), "plan written; nothing is pushed");
    state.plan = Some(plan);
    Ok((Outcome::Planned, PLANNED.to_string()))
}

/// The plan a planning run's engine wrote (redacted, trimmed, cut to fit the result), or why
/// there is none.
fn planned(report: &EngineReport, redactor: &Redactor) -> Result<String, Stop> {
    if let Some(stop) = engine_gave_out(report) {
        return Err(stop);
    }
    match &report.status {
        EngineStatus::LimitReached(reason) => return Err(Stop::failed(plan_stopped(reason))),
        EngineStatus::CutShort { cause, reason } => {
            return Err(Stop::partial(
                *cause,
                "no plan was written (a planning run commits nothing)".into(),
                format!("the plan: {reason}"),
                plan_stopped(reason),
            ));
        }
        _ => {}
    }
    plan::plan_from_summary(&redactor.redact(&report.summary))
        .ok_or_else(|| Stop::failed("the engine wrote no plan"))
}

/// The work after the checkout: the engine, the commit, the tests, the push, the pull request.
async fn work(
    settings: &Settings,
    redactor: &Redactor,
    state: &mut State,
    halt: &Halt<'_>,
    checkout: Checkout,
) -> Result<(Outcome, String), Stop> {
    let stop = halt.stop;
    let Checkout {
        git,
        dir,
        base,
        branch: branch_name,
        base_commit,
        remote_head,
        token_hint,
    } = checkout;

    // The test command's programs, before anything is spent on the work: a missing one is the
    // image's doing and another attempt would meet it again. (Checked again before the tests
    // run: the work may change what is detected.)
    if let Some(command) = test_command(settings, &dir)
        && let Some(missing) = check_test_tools(settings, &command, &dir).await
    {
        tracing::warn!(program = %missing.program, "the test command cannot run");
        return Err(Stop::gave_up(missing.message(&command)));
    }

    // 3. Work (until done, the deadline or the budget, or until the pod is told to stop). An
    // attempt that continues the branch is told so.
    if stop.is_cancelled() && !halt.deadline_passed() {
        return Err(Stop::failed(STOPPED_BEFORE_WORK));
    }
    let prompt = match remote_head {
        Some(_) => engine::continuing_prompt(&settings.prompt, &branch_name),
        None => settings.prompt.clone(),
    };
    let report = run_engine(
        settings,
        redactor,
        &dir,
        Ask {
            system: engine::SYSTEM_PROMPT,
            prompt: &prompt,
            tail: Tail::WORK,
        },
        halt,
    )
    .await?;
    let stopped_before_deadline = halt.seconds_before_deadline();
    record_usage(settings, state, &report);
    tracing::info!(status = ?report.status, iterations = report.iterations, "work step ended");
    if let Some(stop) = engine_gave_out(&report) {
        return Err(stop);
    }
    let wip = matches!(
        report.status,
        EngineStatus::LimitReached(_) | EngineStatus::CutShort { .. }
    );

    // 4. Commit (before the tests, so their artifacts never land in the commit).
    let who = Identity {
        name: settings.author_name.clone(),
        email: settings.author_email.clone(),
    };
    let message = commit_message(
        settings.ticket.as_deref(),
        &redactor.redact(&report.summary),
        settings.task.as_deref(),
        settings.attempt,
        wip,
    );
    let committed = git.commit_all(&message, &who).await?;
    let head = git.rev_parse("HEAD").await?;
    let ahead = git.commits_between(&base_commit, &head).await?;
    let publish = decide_publish(ahead, &head, remote_head.as_deref());
    tracing::info!(committed, ahead, ?publish, "commit");
    if publish != Publish::NothingToPush {
        state.commit = Some(head.clone());
    }
    if let EngineStatus::CutShort { cause, reason } = &report.status {
        let pushed = publish == Publish::Push;
        if pushed {
            git.push(&branch_name)
                .await
                .map_err(|e| with_hint(e, token_hint.as_deref()))?;
        }
        let done = cut::done(
            &committed_files(&git, committed).await,
            committed.then_some(head.as_str()),
        );
        let left = match cause {
            CutShort::Deadline => cut::left_at_deadline(stopped_before_deadline),
            CutShort::Budget => cut::left_at_budget(reason),
        };
        let message = if pushed {
            format!("stopped: {reason}; the work in progress is pushed to {branch_name}")
        } else {
            format!("stopped: {reason}; nothing new to push")
        };
        tracing::warn!(?cause, %done, "the work was cut short");
        return Err(Stop::partial(*cause, done, left, message));
    }
    if let EngineStatus::LimitReached(reason) = &report.status {
        if publish == Publish::Push {
            git.push(&branch_name)
                .await
                .map_err(|e| with_hint(e, token_hint.as_deref()))?;
            return Err(Stop::failed(format!(
                "stopped: {reason}; the work in progress is pushed to {branch_name}"
            )));
        }
        return Err(Stop::failed(format!("stopped: {reason}")));
    }
    if publish == Publish::NothingToPush {
        let summary = if report.summary.is_empty() {
            "the engine produced no change".to_string()
        } else {
            report.summary.clone()
        };
        return Ok((Outcome::NoChanges, summary));
    }

    // 5. Tests (skipped when told to stop or at the deadline: the push comes first).
    let mut tests_cut = false;
    let tests = tokio::select! {
        tests = run_tests(settings, &git, redactor) => tests,
        () = stop.cancelled() => {
            tracing::warn!("told to stop: tests skipped, pushing the work");
            TestRun::NotRun
        }
        () = halt.deadline() => {
            tracing::warn!("the deadline is near: tests skipped, pushing the work");
            tests_cut = true;
            TestRun::NotRun
        }
    };
    let tests_cut = tests_cut || (stop.is_cancelled() && halt.deadline_passed());
    state.tests_passed = match &tests {
        TestRun::Ran { passed } => Some(*passed),
        TestRun::NotRun | TestRun::CannotRun { .. } => None,
    };

    // 6. Push.
    if publish == Publish::Push {
        tracing::info!(branch = %branch_name, "pushing");
        git.push(&branch_name)
            .await
            .map_err(|e| with_hint(e, token_hint.as_deref()))?;
    }
    if tests_cut {
        // The deadline came before the tests ended: the work is on the branch, its tests
        // unknown.
        let done = cut::done(
            &committed_files(&git, committed).await,
            committed.then_some(head.as_str()),
        );
        return Err(Stop::partial(
            CutShort::Deadline,
            done,
            cut::left_tests_at_deadline(halt.seconds_before_deadline()),
            format!(
                "stopped: the deadline is near; the tests did not finish; the work is pushed to {branch_name}"
            ),
        ));
    }
    if stop.is_cancelled() {
        // Told to stop before the tests ended: the work is on the branch, its tests unknown.
        return Err(Stop::failed(format!(
            "stopped: {STOPPED}; the tests did not finish; the work is pushed to {branch_name}"
        )));
    }
    if let TestRun::CannotRun { command, missing } = tests {
        // The work is kept on the branch; no pull request for untested work.
        return Err(Stop::gave_up(format!(
            "the work is pushed to {branch_name}, but {}",
            missing.message(&command)
        )));
    }
    let outcome = if state.tests_passed == Some(false) {
        Outcome::TestsFailed
    } else {
        Outcome::Succeeded
    };

    // 7. Pull request.
    if let Some(url) = pull_request(
        settings,
        &git,
        redactor,
        &branch_name,
        &base,
        &report.summary,
        state.tests_passed,
    )
    .await?
    {
        state.pull_request_url = Some(url);
    }
    let summary = if report.summary.is_empty() {
        "done".to_string()
    } else {
        report.summary
    };
    Ok((outcome, summary))
}

/// The files this run's commit changed (none when it committed nothing, or when git cannot
/// say: the list is only for people).
async fn committed_files(git: &Git, committed: bool) -> Vec<String> {
    if !committed {
        return Vec::new();
    }
    git.changed_files("HEAD").await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list the committed files");
        Vec::new()
    })
}

/// How the test step went.
enum TestRun {
    /// Skipped, none found, or told to stop.
    NotRun,
    /// The tests ran.
    Ran { passed: bool },
    /// A program the command needs cannot start: the image's doing, not the work's.
    CannotRun {
        command: TestCommand,
        missing: MissingTool,
    },
}

/// The test command: `RECAC_TEST_COMMAND`, or the one detected in `dir`.
fn test_command(settings: &Settings, dir: &Path) -> Option<TestCommand> {
    if settings.skip_tests {
        return None;
    }
    match &settings.test_command {
        // Operator configuration, not ticket text: run it through sh.
        Some(cmd) => Some(TestCommand::configured(cmd)),
        None => detect::detect_with_source(&RepoFiles::read(dir))
            .map(|(argv, file)| TestCommand::detected(argv, file)),
    }
}

/// How `command` runs in `dir`: its timeout and the environment the model's commands get.
fn test_spec(settings: &Settings, command: &TestCommand, dir: &Path) -> CommandSpec {
    let args: Vec<&str> = command.argv[1..].iter().map(String::as_str).collect();
    let mut spec = CommandSpec::new(command.argv[0].clone(), &args, dir, settings.test_timeout);
    settings.child_env.apply(&mut spec);
    spec
}

/// Before the work: whether the programs `command` starts are there (see
/// [`toolchain::preflight`]) and, for `python3 -m pytest`, whether Python finds pytest (as
/// `-m` would, from the repository's folder; nothing is imported).
async fn check_test_tools(
    settings: &Settings,
    command: &TestCommand,
    dir: &Path,
) -> Option<MissingTool> {
    let spec = test_spec(settings, command, dir);
    let finder = Finder::new(spec.path_var(), dir);
    if let Some(missing) = toolchain::preflight(command, &finder) {
        return Some(missing);
    }
    let (python, module) = command.python_module()?;
    let mut check = spec.clone();
    check.args = vec![
        "-c".into(),
        "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)"
            .into(),
        module.into(),
    ];
    check.timeout = std::time::Duration::from_secs(60);
    match process::run(&check).await {
        Ok(out) if out.exit_code == Some(3) => Some(MissingTool {
            program: python.to_string(),
            problem: Problem::PythonModule(module.to_string()),
            path: finder.path_text(),
        }),
        // Found, or the check itself failed: the test run will tell.
        _ => None,
    }
}

async fn run_tests(settings: &Settings, git: &Git, redactor: &Redactor) -> TestRun {
    if settings.skip_tests {
        tracing::info!("tests skipped (RECAC_TEST_COMMAND=none)");
        return TestRun::NotRun;
    }
    let Some(command) = test_command(settings, git.dir()) else {
        tracing::info!("no test command configured or detected");
        return TestRun::NotRun;
    };
    let spec = test_spec(settings, &command, git.dir());
    let finder = Finder::new(spec.path_var(), git.dir());
    let cannot_run = |missing: MissingTool| {
        tracing::warn!(program = %missing.program, "{}", missing.what());
        TestRun::CannotRun {
            command: command.clone(),
            missing,
        }
    };
    if let Some(missing) = toolchain::preflight(&command, &finder) {
        return cannot_run(missing);
    }
    tracing::info!(command = %command.argv.join(" "), "running tests");
    match process::run(&spec).await {
        Ok(out) => {
            let passed = out.success();
            let text = redactor.redact(&out.describe(8192));
            for line in text.lines() {
                tracing::info!(target: "recac::tests", "{line}");
            }
            tracing::info!(
                passed,
                seconds = out.duration.as_secs_f64(),
                "tests finished"
            );
            if !passed
                && let Some(missing) = toolchain::after_run(
                    &command,
                    out.exit_code,
                    &String::from_utf8_lossy(&out.stderr),
                    &finder,
                )
            {
                return cannot_run(missing);
            }
            TestRun::Ran { passed }
        }
        Err(e) => match toolchain::spawn_error(&command.argv[0], &e, &finder) {
            Some(missing) => cannot_run(missing),
            None => {
                tracing::warn!(error = %e, "cannot run the test command");
                TestRun::Ran { passed: false }
            }
        },
    }
}

async fn pull_request(
    settings: &Settings,
    git: &Git,
    redactor: &Redactor,
    branch: &str,
    base: &str,
    summary: &str,
    tests_passed: Option<bool>,
) -> Result<Option<String>, Stop> {
    if settings.pull_request == PullRequestMode::Never {
        return Ok(None);
    }
    let always = settings.pull_request == PullRequestMode::Always;
    let repo = match &settings.github_repository {
        Some(r) => GitHubRepo::parse(r),
        None => github::repo_from_remote(&git.remote_url().await?, &settings.github_api_url),
    };
    let (Some(repo), Some(token)) = (repo, settings.git_token.as_deref()) else {
        if always {
            return Err(Stop::gave_up(format!(
                "{}=true needs a GitHub remote (or {}) and {}",
                vars::PULL_REQUEST,
                vars::GITHUB_REPOSITORY,
                vars::GIT_TOKEN
            )));
        }
        return Ok(None);
    };
    let first = summary.lines().next().unwrap_or("").trim();
    let title = match (&settings.ticket, first.is_empty()) {
        (Some(t), false) => format!("{t}: {first}"),
        (Some(t), true) => format!("{t}: changes by recac"),
        (None, false) => first.to_string(),
        (None, true) => format!("recac: {branch}"),
    };
    let title: String = redactor.redact(&title).chars().take(120).collect();
    let tests = match tests_passed {
        Some(true) => "passed",
        Some(false) => "FAILED",
        None => "not run (none found)",
    };
    let mut body = format!("{}\n\n---\nTests: {tests}\n", redactor.redact(summary));
    if let Some(t) = &settings.ticket {
        body.push_str(&format!("Ticket: {t}\n"));
    }
    body.push_str("Opened by recac.\n");
    let gh = GitHub::new(&settings.github_api_url, token, redactor.clone())
        .map_err(|e| Stop::failed(e.to_string()))?;
    let pr = PullRequest {
        head: branch,
        base,
        title: &title,
        body: &body,
    };
    match gh.ensure(&repo, &pr).await {
        Ok(url) => {
            tracing::info!(%url, "pull request");
            Ok(Some(url))
        }
        Err(e) if e.permanent => Err(Stop::gave_up(e.to_string())),
        Err(e) => Err(Stop::failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::GitErrorKind;

    #[test]
    fn publish_decisions() {
        assert_eq!(decide_publish(0, "a", None), Publish::NothingToPush);
        assert_eq!(decide_publish(0, "a", Some("a")), Publish::NothingToPush);
        assert_eq!(decide_publish(2, "a", Some("a")), Publish::AlreadyPushed);
        assert_eq!(decide_publish(2, "b", Some("a")), Publish::Push);
        assert_eq!(decide_publish(1, "b", None), Publish::Push);
    }

    #[test]
    fn commit_messages_name_the_ticket() {
        let m = commit_message(Some("PROJ-1"), "Add flag\n\nDetails", Some("t1"), 2, false);
        assert!(m.starts_with("PROJ-1: Add flag\n"));
        assert!(m.contains("Details") && m.contains("Ticket: PROJ-1") && m.contains("attempt 2"));
        assert!(
            commit_message(None, "", None, 1, true).starts_with("WIP: recac: changes by recac\n")
        );
    }

    fn report(status: EngineStatus, summary: &str) -> EngineReport {
        EngineReport {
            status,
            summary: summary.into(),
            usage: Default::default(),
            iterations: 1,
            reported: None,
        }
    }

    #[test]
    fn a_planning_run_ends_with_the_plan_or_says_why_not() {
        let redactor = Redactor::new(vec!["sk-planted-secret-0123".to_string()]);
        let plan = planned(
            &report(
                EngineStatus::Done,
                "\n  Files to change: a.txt (key sk-planted-secret-0123)\n",
            ),
            &redactor,
        )
        .unwrap_or_else(|s| panic!("{}", s.message));
        assert!(plan.starts_with("Files to change: a.txt"), "{plan}");
        assert!(!plan.contains("sk-planted-secret-0123") && plan.ends_with(')'));
        let long = planned(&report(EngineStatus::Done, &"é".repeat(4000)), &redactor)
            .unwrap_or_else(|s| panic!("{}", s.message));
        assert!(long.len() <= recac_api::agent_contract::MAX_PLAN_BYTES);
        assert!(long.ends_with("… (plan cut at 3000 bytes)"), "{long}");

        let stop = |status, summary| match planned(&report(status, summary), &redactor) {
            Ok(plan) => panic!("a plan: {plan}"),
            Err(stop) => (stop.outcome, stop.message),
        };
        assert_eq!(
            stop(EngineStatus::Done, " \n "),
            (Outcome::Failed, "the engine wrote no plan".to_string())
        );
        let (outcome, message) = stop(EngineStatus::LimitReached(STOPPED.into()), "");
        assert_eq!(outcome, Outcome::Failed);
        assert!(
            message.starts_with("stopped before the plan was written")
                && message.contains("SIGTERM"),
            "{message}"
        );
        assert_eq!(
            stop(EngineStatus::CannotDo, "needs a database"),
            (Outcome::GaveUp, "needs a database".to_string())
        );
        let failed = |permanent| EngineStatus::Failed {
            permanent,
            message: "the model refused the key".into(),
        };
        assert_eq!(stop(failed(true), "").0, Outcome::GaveUp);
        assert_eq!(stop(failed(false), "").0, Outcome::Failed);
    }

    #[test]
    fn git_kind_maps_to_outcome() {
        let s: Stop = GitError {
            op: "push".into(),
            kind: GitErrorKind::Declined,
            message: String::new(),
        }
        .into();
        assert_eq!(s.outcome, Outcome::GaveUp);
        let s: Stop = GitError {
            op: "push".into(),
            kind: GitErrorKind::NonFastForward,
            message: String::new(),
        }
        .into();
        assert_eq!(s.outcome, Outcome::Failed);
    }
}
