//! The `recac start` flow: workspace, branch, work, tests, commit, push, pull request, report.

use std::path::{Path, PathBuf};

use recac_api::agent_contract::{AgentResult, Outcome, TokenUsage};
use recac_api::repo_host::{HostScope, RepoLocation, Transport, render_list};

use crate::branch::{self, BranchPlan};
use crate::detect::{self, RepoFiles};
use crate::engine::{self, EngineReport, EngineStatus, llm::LlmClient, tools::Toolbox};
use crate::environment::{self, FsError};
use crate::git::{Git, GitCredential, GitError, GitErrorKind, Identity};
use crate::github::{self, GitHub, GitHubRepo, PullRequest};
use crate::process::{self, CommandSpec};
use crate::redact::Redactor;
use crate::report::exit_code_for;
use crate::settings::{EngineSettings, PullRequestMode, Settings, vars};
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
}

impl Stop {
    fn gave_up(message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::GaveUp,
            message: message.into(),
        }
    }
    fn failed(message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failed,
            message: message.into(),
        }
    }
}

impl From<GitError> for Stop {
    fn from(e: GitError) -> Self {
        let outcome = if e.kind.is_permanent() {
            Outcome::GaveUp
        } else {
            Outcome::Failed
        };
        Stop {
            outcome,
            message: e.to_string(),
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
        workspace: None,
    };
    let (outcome, summary) = match flow(settings, &redactor, &mut state, &stop).await {
        Ok((outcome, summary)) => (outcome, summary),
        Err(stop) => (stop.outcome, stop.message),
    };
    let summary = redactor.redact(&summary);
    let result = AgentResult {
        outcome: outcome.clone(),
        branch: state.branch,
        commit: state.commit,
        pull_request_url: state.pull_request_url,
        tests_passed: state.tests_passed,
        summary: (!summary.trim().is_empty()).then_some(summary),
        token_usage: state.usage,
    };
    RunOutput {
        exit_code: exit_code_for(&outcome),
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
    workspace: Option<PathBuf>,
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
    stop: &CancellationToken,
) -> Result<(Outcome, String), Stop> {
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
    let remote_head = exists.then(|| start.clone());

    // The test command's programs, before anything is spent on the work: a missing one is the
    // image's doing and another attempt would meet it again. (Checked again before the tests
    // run: the work may change what is detected.)
    if let Some(command) = test_command(settings, &dir)
        && let Some(missing) = check_test_tools(settings, &command, &dir).await
    {
        tracing::warn!(program = %missing.program, "the test command cannot run");
        return Err(Stop::gave_up(missing.message(&command)));
    }

    // 3. Work (until done, or until the pod is told to stop).
    if stop.is_cancelled() {
        return Err(Stop::failed(STOPPED_BEFORE_WORK));
    }
    let work = async {
        Ok::<_, Stop>(match &settings.engine {
            EngineSettings::Builtin(llm) => {
                let client = LlmClient::new(llm.clone(), redactor.clone())
                    .map_err(|e| Stop::gave_up(e.to_string()))?;
                let toolbox = Toolbox::new(
                    &dir,
                    settings.limits.command_timeout,
                    settings.limits.output_limit,
                    redactor.clone(),
                    settings.child_env.clone(),
                )
                .map_err(|e| {
                    Stop::from(FsError::new(
                        "open the workspace folder",
                        &dir,
                        settings.workspace.is_some().then_some(vars::WORKSPACE),
                        e,
                    ))
                })?;
                engine::run_builtin(&client, &toolbox, &settings.prompt, &settings.limits).await
            }
            EngineSettings::External(ext) => {
                engine::run_external(
                    ext,
                    &dir,
                    &settings.prompt,
                    settings.limits.max_duration,
                    redactor,
                    &settings.child_env,
                )
                .await
            }
        })
    };
    let report: EngineReport = tokio::select! {
        report = work => report?,
        () = stop.cancelled() => {
            tracing::warn!("told to stop: ending the work and pushing what it left");
            EngineReport {
                status: EngineStatus::LimitReached(STOPPED.into()),
                summary: String::new(),
                usage: Default::default(),
                iterations: 0,
            }
        }
    };
    if matches!(settings.engine, EngineSettings::Builtin(_)) {
        state.usage = Some(report.usage.clone());
    }
    tracing::info!(status = ?report.status, iterations = report.iterations, "work step ended");
    let wip = match &report.status {
        EngineStatus::Done => false,
        EngineStatus::LimitReached(_) => true,
        EngineStatus::CannotDo => {
            let why = if report.summary.is_empty() {
                "the engine declared it cannot do the task".into()
            } else {
                report.summary.clone()
            };
            return Err(Stop::gave_up(why));
        }
        EngineStatus::Failed { permanent, message } => {
            return Err(if *permanent {
                Stop::gave_up(message.clone())
            } else {
                Stop::failed(message.clone())
            });
        }
    };

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

    // 5. Tests (skipped when told to stop: the push comes first).
    let tests = tokio::select! {
        tests = run_tests(settings, &git, redactor) => tests,
        () = stop.cancelled() => {
            tracing::warn!("told to stop: tests skipped, pushing the work");
            TestRun::NotRun
        }
    };
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
