//! `recac start`: the agent. In a task's Job it reads everything from the environment the
//! operator sets; on a developer's machine `--prompt ... --repo URL` or `--jira KEY` run the same
//! flow. The work itself lives in the `recac-agent` crate.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use recac_agent::broker::{self, BrokerError};
use recac_agent::redact::{RedactingStderr, Redactor};
use recac_agent::secrets::SecretFiles;
use recac_agent::settings::{ENV_DOCS, Settings, secret_texts, secrets_from_lookup, vars};
use recac_api::agent_contract::{AgentResult, Outcome, exit_code};

/// Jira credentials `--jira` may use; their values are redacted too.
const JIRA_SECRET_VARS: &[&str] = &["JIRA_API_TOKEN", "JIRA_PAT"];

fn env_help() -> String {
    let mut out = String::from(
        "Clones the repository, does the work (built-in LLM engine or an external agent CLI), runs the tests, \
commits, pushes, optionally opens a GitHub pull request, and writes a JSON result to RECAC_RESULT_PATH. \
With RECAC_MODE=plan (--mode plan) it writes a plan of the work instead and commits and pushes nothing.\n\n\
Exit codes: 0 success (or the plan written); 1 retryable failure (also: tests failed, limits reached); 3 gave up, do not retry \
(bad repository or settings, credentials refused, the engine declared the task impossible, no changes).\n\n\
Environment (flags above override their variable):\n",
    );
    for (name, default, meaning) in ENV_DOCS {
        out.push_str(&format!("  {name}\n      {meaning} [default: {default}]\n"));
    }
    out.push_str(
        "  JIRA_URL, JIRA_EMAIL, JIRA_API_TOKEN, JIRA_PAT, JIRA_USERNAME, JIRA_FLAVOR\n      \
Only with --jira: the operator's Jira settings, used to read the ticket.\n  \
RUST_LOG\n      Log filter [default: info].\n",
    );
    out
}

/// `recac start`'s flags.
#[derive(clap::Args, Debug)]
#[command(after_long_help = env_help(), after_help = "Run `recac start --help` for every environment variable.")]
pub struct StartArgs {
    /// Read the ticket KEY from Jira (uses JIRA_URL, JIRA_EMAIL/JIRA_API_TOKEN or JIRA_PAT) and work on it;
    /// --prompt, when given too, is added as instructions.
    #[arg(long, value_name = "KEY")]
    jira: Option<String>,
    /// The operator's config file; with --jira its `jira:` section is used instead of the JIRA_* variables.
    #[arg(long, env = "RECAC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// What the agent must do.
    #[arg(long, env = vars::PROMPT, hide_env_values = true)]
    prompt: Option<String>,
    /// A file holding the prompt.
    #[arg(long, env = vars::PROMPT_FILE)]
    prompt_file: Option<PathBuf>,
    /// The repository to clone (no credentials in it).
    #[arg(long, env = vars::REPO_URL)]
    repo: Option<String>,
    /// The feature branch [default: recac/<ticket or prompt slug>].
    #[arg(long, env = vars::BRANCH)]
    branch: Option<String>,
    /// The branch new work starts from [default: the remote's default branch].
    #[arg(long, env = vars::BASE_BRANCH)]
    base_branch: Option<String>,
    /// The ticket key, named in the commit message and pull request.
    #[arg(long, env = vars::TICKET)]
    ticket: Option<String>,
    /// `plan`: write a plan of the work (the result's `plan`); change, commit and push nothing.
    #[arg(long, env = vars::MODE)]
    mode: Option<String>,
    /// `builtin` or `external`.
    #[arg(long, env = vars::ENGINE)]
    engine: Option<String>,
    /// `openai` or `anthropic`.
    #[arg(long, env = vars::PROVIDER)]
    provider: Option<String>,
    /// The model name.
    #[arg(long, env = vars::MODEL)]
    model: Option<String>,
    /// External engine: the agent CLI to run in the workspace.
    #[arg(long, env = vars::AGENT_COMMAND)]
    agent_command: Option<String>,
    /// External engine: one argument of the agent CLI (repeat for more; overrides RECAC_AGENT_ARGS).
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Test command run with sh -c (`none` skips tests) [default: detected].
    #[arg(long, env = vars::TEST_COMMAND)]
    test_command: Option<String>,
    /// Directory to clone into (empty or absent) [default: a new temporary directory].
    #[arg(long, env = vars::WORKSPACE)]
    workspace: Option<PathBuf>,
    /// Where the result JSON is written.
    #[arg(long, env = vars::RESULT_PATH)]
    result_path: Option<PathBuf>,
    /// `auto`, `true` or `false`.
    #[arg(long, env = vars::PULL_REQUEST)]
    pull_request: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
}

impl StartArgs {
    /// The flags as variable overrides.
    fn overrides(&self) -> HashMap<&'static str, String> {
        let mut map = HashMap::new();
        let pairs: [(&'static str, Option<String>); 15] = [
            (vars::PROMPT, self.prompt.clone()),
            (
                vars::PROMPT_FILE,
                self.prompt_file.as_ref().map(|p| p.display().to_string()),
            ),
            (vars::REPO_URL, self.repo.clone()),
            (vars::BRANCH, self.branch.clone()),
            (vars::BASE_BRANCH, self.base_branch.clone()),
            (vars::TICKET, self.ticket.clone()),
            (vars::MODE, self.mode.clone()),
            (vars::ENGINE, self.engine.clone()),
            (vars::PROVIDER, self.provider.clone()),
            (vars::MODEL, self.model.clone()),
            (vars::AGENT_COMMAND, self.agent_command.clone()),
            (vars::TEST_COMMAND, self.test_command.clone()),
            (
                vars::WORKSPACE,
                self.workspace.as_ref().map(|p| p.display().to_string()),
            ),
            (
                vars::RESULT_PATH,
                self.result_path.as_ref().map(|p| p.display().to_string()),
            ),
            (vars::PULL_REQUEST, self.pull_request.clone()),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                map.insert(k, v);
            }
        }
        if !self.agent_args.is_empty() {
            map.insert(
                vars::AGENT_ARGS,
                serde_json::to_string(&self.agent_args).unwrap_or_default(),
            );
        }
        map
    }
}

/// Reads ticket KEY from Jira and makes it the prompt.
async fn jira_prompt(
    key: &str,
    extra: Option<&str>,
    config: Option<&std::path::Path>,
) -> Result<String, String> {
    let cfg = crate::jira_cmd::load_settings(config).map_err(|e| format!("Jira settings: {e}"))?;
    let client = recac_jira::JiraClient::new(&cfg).map_err(|e| format!("Jira client: {e}"))?;
    let issue = client
        .get_issue(key, &["summary", "description"])
        .await
        .map_err(|e| format!("cannot read {key} from Jira: {e}"))?;
    let summary = issue.fields.summary.unwrap_or_default();
    let description = issue
        .fields
        .description
        .as_ref()
        .map(recac_jira::adf::plain_text)
        .unwrap_or_default();
    let mut prompt = format!("Jira ticket {key}: {summary}\n\n{description}\n");
    if let Some(extra) = extra.filter(|e| !e.trim().is_empty()) {
        prompt.push_str(&format!("\nAdditional instructions:\n{extra}\n"));
    }
    Ok(prompt)
}

fn finish(result: &AgentResult, path: Option<&std::path::Path>) -> ExitCode {
    let result = &with_egress_report(result);
    let message = recac_agent::report::termination_message(result);
    tracing::info!(result = %message, "result");
    if let Some(path) = path
        && let Err(e) = recac_agent::report::write_result(path, result)
    {
        tracing::warn!(error = %e, "cannot write the result file");
    }
    println!("{message}");
    let code = recac_agent::report::exit_code_for(result);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `result` with what the egress proxy refused this pod, when there is a proxy.
fn with_egress_report(result: &AgentResult) -> AgentResult {
    let mut result = result.clone();
    let Some(proxy) = std::env::var(recac_api::agent_contract::env::EGRESS_PROXY)
        .ok()
        .filter(|p| !p.trim().is_empty())
    else {
        return result;
    };
    match recac_agent::egress::blocked_by_proxy(&proxy) {
        Ok(blocked) => {
            for host in &blocked {
                tracing::warn!(host = %host.host, port = host.port, count = host.count, "the egress proxy refused connections to a host not on the task's allow-list");
            }
            result.egress_blocked = blocked;
        }
        Err(error) => tracing::warn!(%error, "cannot report what the egress proxy refused"),
    }
    result
}

fn gave_up(message: String) -> AgentResult {
    ended(Outcome::GaveUp, message)
}

fn ended(outcome: Outcome, message: String) -> AgentResult {
    AgentResult {
        outcome,
        branch: None,
        commit: None,
        pull_request_url: None,
        tests_passed: None,
        summary: Some(message),
        token_usage: None,
        plan: None,
        partial: None,
        usage: None,
        egress_blocked: Vec::new(),
    }
}

/// The task's Secrets from the secret broker, when `RECAC_SECRETS_SOCKET` names its socket
/// (the pod has the `secrets` sidecar): read once, first, and then this process is made
/// non-dumpable, so that the commands the model runs (its children, of its user) cannot read
/// its memory or environment through `/proc`. `None` without a socket: the Secrets are read
/// from `RECAC_SECRETS_DIR`, if anything.
fn secrets_from_broker() -> Option<(Result<SecretFiles, BrokerError>, std::io::Result<()>)> {
    let socket = std::env::var(vars::SECRETS_SOCKET)
        .ok()
        .filter(|s| !s.trim().is_empty())?;
    // Before the values are in memory: nothing of them is ever in a dumpable process.
    let undumpable = broker::make_undumpable();
    let files = broker::fetch(std::path::Path::new(socket.trim()), broker::CONNECT_WAIT)
        .map(|entries| SecretFiles::from_entries(&entries));
    Some((files, undumpable))
}

/// Runs `recac start`.
pub fn run(args: StartArgs, log_format: recac_runtime::logging::LogFormat) -> ExitCode {
    let mut overrides = args.overrides();
    let env_lookup = |k: &str| std::env::var(k).ok();
    let from_broker = secrets_from_broker();
    let mut secrets = match &from_broker {
        Some((Ok(files), _)) => secret_texts(env_lookup, files),
        Some((Err(_), _)) => secret_texts(env_lookup, &SecretFiles::default()),
        None => secrets_from_lookup(env_lookup),
    };
    secrets.extend(
        JIRA_SECRET_VARS
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .filter(|v| !v.trim().is_empty()),
    );
    let redactor = Redactor::new(secrets);
    let log_format = if args.json_logs {
        recac_runtime::logging::LogFormat::Json
    } else {
        log_format
    };
    recac_runtime::logging::init(log_format, "info", RedactingStderr::new(redactor.clone()));
    let fallback_result_path = overrides
        .get(vars::RESULT_PATH)
        .cloned()
        .or_else(|| std::env::var(vars::RESULT_PATH).ok())
        .unwrap_or_else(|| "/dev/termination-log".into());
    let broker_files = match from_broker {
        None => None,
        Some((files, undumpable)) => {
            if let Err(e) = undumpable {
                tracing::warn!(error = %e, "cannot make the agent non-dumpable: the commands the model runs may read its memory");
            }
            match files {
                Ok(files) => {
                    if std::env::var(vars::SECRETS_DIR).is_ok_and(|d| !d.trim().is_empty()) {
                        tracing::warn!(
                            "{} is ignored: the Secrets come from the secret broker ({})",
                            vars::SECRETS_DIR,
                            vars::SECRETS_SOCKET
                        );
                    }
                    Some(files)
                }
                Err(e) => {
                    let message = redactor.redact(&format!("{}: {e}", vars::SECRETS_SOCKET));
                    tracing::error!("{message}");
                    let outcome = if e.is_permanent() {
                        Outcome::GaveUp
                    } else {
                        Outcome::Failed
                    };
                    return finish(
                        &ended(outcome, message),
                        Some(std::path::Path::new(&fallback_result_path)),
                    );
                }
            }
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit_code::RETRYABLE as u8);
        }
    };
    runtime.block_on(async move {
        if let Some(key) = &args.jira {
            match jira_prompt(key, args.prompt.as_deref(), args.config.as_deref()).await {
                Ok(prompt) => {
                    overrides.insert(vars::PROMPT, prompt);
                    overrides.remove(vars::PROMPT_FILE);
                    overrides.entry(vars::TICKET).or_insert_with(|| key.clone());
                }
                Err(e) => {
                    tracing::error!("{e}");
                    return finish(
                        &gave_up(redactor.redact(&e)),
                        Some(std::path::Path::new(&fallback_result_path)),
                    );
                }
            }
        }
        let lookup = |k: &str| {
            if args.jira.is_some() && k == vars::PROMPT_FILE {
                return None;
            }
            overrides.get(k).cloned().or_else(|| std::env::var(k).ok())
        };
        let settings = match broker_files {
            Some(files) => Settings::with_secret_files(lookup, files),
            None => Settings::from_lookup(lookup),
        };
        let settings = match settings {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("invalid settings: {e}");
                return finish(
                    &gave_up(format!("invalid settings: {e}")),
                    Some(std::path::Path::new(&fallback_result_path)),
                );
            }
        };
        tracing::info!(
            task = settings.task.as_deref().unwrap_or("-"),
            attempt = settings.attempt,
            ticket = settings.ticket.as_deref().unwrap_or("-"),
            "recac start"
        );
        let stop = tokio_util::sync::CancellationToken::new();
        // The agent pushes what it has and writes its result within the pod's grace period; as a
        // container's PID 1 it would otherwise ignore SIGTERM and be killed without a result.
        tokio::spawn(crate::signals::cancel_on_signal(
            stop.clone(),
            std::time::Duration::ZERO,
            "a stopped pod will end without its result",
        ));
        let out = recac_agent::run_until(&settings, &redactor, stop).await;
        finish(&out.result, Some(&settings.result_path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        start: StartArgs,
    }

    #[test]
    fn help_documents_every_variable() {
        let help = env_help();
        for (name, _, _) in ENV_DOCS {
            assert!(help.contains(name), "{name} missing from --help");
        }
    }

    /// The demo model (`recac dev`) tells the agent's planning runs from its work by the
    /// agent's planning prompt.
    #[test]
    fn the_demo_model_plans_when_the_agent_asks_for_a_plan() {
        use recac_agent::plan::planning_prompt;
        use recac_dev::model::next_step;
        use serde_json::json;
        let task = "Jira ticket DEMO-1: Greet Ada\n\nFile: greetings/ada.txt\nLine: Hello, Ada!\n";
        let mut messages = vec![
            json!({"role": "system", "content": recac_agent::plan::SYSTEM_PROMPT}),
            json!({"role": "user", "content": planning_prompt(task)}),
        ];
        assert_eq!(next_step(&messages).name, "read_file");
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": "r", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"greetings/ada.txt\"}"}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": "r", "content": "error: cannot read greetings/ada.txt: No such file"}));
        let finish = next_step(&messages);
        assert_eq!(
            (finish.name, &finish.arguments["status"]),
            ("finish", &json!("done"))
        );
        let plan = finish.arguments["summary"].as_str().unwrap_or_default();
        assert!(
            plan.starts_with("[demo model] plan: write \"Hello, Ada!\" to greetings/ada.txt"),
            "{plan}"
        );
        // The work's prompt is not a planning run's.
        messages[1] = json!({"role": "user", "content": task});
        assert_eq!(next_step(&messages).name, "write_file");
    }

    #[test]
    fn flags_override_variables() {
        let cli = Cli::try_parse_from([
            "start",
            "--repo",
            "file:///r",
            "--agent-command",
            "my-agent",
            "--agent-arg",
            "--yes",
            "--agent-arg",
            "two words",
            "--mode",
            "plan",
        ])
        .unwrap();
        let o = cli.start.overrides();
        assert_eq!(o.get(vars::MODE).map(String::as_str), Some("plan"));
        assert_eq!(o.get(vars::REPO_URL).map(String::as_str), Some("file:///r"));
        assert_eq!(
            o.get(vars::AGENT_ARGS).map(String::as_str),
            Some(r#"["--yes","two words"]"#)
        );
    }
}
