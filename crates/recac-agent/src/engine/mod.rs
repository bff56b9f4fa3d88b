//! The engines that do the work: the built-in LLM tool-use loop and an external agent CLI.

pub mod llm;
pub mod tools;

pub mod usage;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use recac_api::agent_contract::{CutShort, ModelUsage, TokenUsage};

use crate::budget::Budget;
use crate::process::{self, CommandSpec};
use crate::redact::Redactor;
use crate::secrets::ChildEnv;
use crate::settings::{ExternalSettings, Limits, vars};
use llm::{LlmClient, Message};
use tools::{ToolOutcome, Toolbox};

/// How the work step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineStatus {
    /// The engine says the task is done.
    Done,
    /// The engine says the task cannot be done.
    CannotDo,
    /// A limit (iterations, tokens, wall clock) stopped it.
    LimitReached(String),
    /// The deadline or the budget ended it (`reason` says how).
    CutShort { cause: CutShort, reason: String },
    /// It failed; `permanent` when another attempt would fail the same way.
    Failed { permanent: bool, message: String },
}

/// The work step's report.
#[derive(Clone, Debug)]
pub struct EngineReport {
    pub status: EngineStatus,
    pub summary: String,
    pub usage: TokenUsage,
    pub iterations: u32,
    /// What each model cost, as an external agent CLI reported it (`None`: it reported
    /// nothing; the built-in engine's is counted by the caller from `usage`).
    pub reported: Option<Vec<ModelUsage>>,
}

/// The tokens the built-in engine has spent so far, readable while it runs (so that a run
/// stopped from outside still reports them).
#[derive(Clone, Debug, Default)]
pub struct Meter(Arc<Mutex<TokenUsage>>);

impl Meter {
    /// What was spent so far.
    pub fn spent(&self) -> TokenUsage {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, usage: &TokenUsage) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = usage.clone();
    }
}

/// The built-in engine's system prompt when it does the work (a planning run has
/// [`crate::plan::SYSTEM_PROMPT`]).
pub const SYSTEM_PROMPT: &str = "You are recac, an autonomous software engineer working in a checkout of a git repository. \
Use the tools to inspect the code, make the change the task asks for, and run the project's tests with run_command. \
All paths are relative to the repository root. Do not commit, push or change branches: that is done for you afterwards. \
Work in small steps. When the task is complete call finish with status `done` and a short summary of the change; \
if the task cannot be done call finish with status `cannot_do` and explain why.";

/// The short note added to the prompt of an attempt that continues a branch an earlier
/// attempt pushed.
pub fn continuing_prompt(prompt: &str, branch: &str) -> String {
    format!(
        "{}\n\nNote: an earlier attempt's work on this task is already on the branch `{branch}` (checked out here, in its commits). Continue it: look at what is done, then do what is left; do not redo it.\n",
        prompt.trim_end()
    )
}

/// What ended the built-in engine's work because of its budget, if the budget is spent.
fn budget_spent(budget: &Budget, usage: &TokenUsage) -> Option<EngineStatus> {
    budget.reached(usage).map(|reached| EngineStatus::CutShort {
        cause: CutShort::Budget,
        reason: reached.describe(budget.currency.as_deref()),
    })
}

/// Runs the built-in engine: the model (told `system`) and the tools take turns until `finish`,
/// a limit, or until `budget` is spent (checked before the first model turn and after each:
/// the turn that reaches it still has its tool calls run, so nothing it paid for is lost). Each reply's output is
/// capped at what is left of the budget. `meter` follows what is spent.
pub async fn run_builtin(
    client: &LlmClient,
    toolbox: &Toolbox,
    system: &str,
    prompt: &str,
    limits: &Limits,
    budget: &Budget,
    meter: &Meter,
) -> EngineReport {
    let deadline = Instant::now() + limits.max_duration;
    let specs = tools::specs();
    let mut usage = TokenUsage::default();
    let mut messages = vec![Message::User(prompt.to_string())];
    let mut iterations = 0;
    let report = |status, summary: String, usage: &TokenUsage, iterations| EngineReport {
        status,
        summary,
        usage: usage.clone(),
        iterations,
        reported: None,
    };
    while iterations < limits.max_iterations {
        if let Some(status) = budget_spent(budget, &usage) {
            return report(status, String::new(), &usage, iterations);
        }
        iterations += 1;
        let Some(remaining) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return report(
                EngineStatus::LimitReached("wall-clock limit".into()),
                String::new(),
                &usage,
                iterations,
            );
        };
        let max_output = budget.cap_output(&usage, client.max_output_tokens());
        let reply = match tokio::time::timeout(
            remaining,
            client.complete_within(system, &messages, &specs, max_output),
        )
        .await
        {
            Err(_) => {
                return report(
                    EngineStatus::LimitReached("wall-clock limit".into()),
                    String::new(),
                    &usage,
                    iterations,
                );
            }
            Ok(Err(err)) => {
                let status = EngineStatus::Failed {
                    permanent: err.is_permanent(),
                    message: err.to_string(),
                };
                return report(status, String::new(), &usage, iterations);
            }
            Ok(Ok(reply)) => reply,
        };
        usage.input_tokens += reply.usage.input_tokens;
        usage.output_tokens += reply.usage.output_tokens;
        meter.set(&usage);
        tracing::info!(
            iteration = iterations,
            tool_calls = reply.calls.len(),
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            "model turn"
        );
        let calls = reply.calls.clone();
        messages.push(Message::Assistant {
            text: reply.text.clone(),
            calls: calls.clone(),
        });
        if calls.is_empty() {
            messages.push(Message::User(
                "Continue using the tools. Call finish when the task is complete (or cannot be done).".into(),
            ));
        } else {
            let mut results = Vec::new();
            for call in &calls {
                tracing::info!(tool = %call.name, "tool call");
                let remaining = deadline.saturating_duration_since(Instant::now());
                let outcome = match tokio::time::timeout(
                    remaining,
                    toolbox.call(&call.name, &call.arguments),
                )
                .await
                {
                    Ok(o) => o,
                    Err(_) => {
                        return report(
                            EngineStatus::LimitReached("wall-clock limit".into()),
                            String::new(),
                            &usage,
                            iterations,
                        );
                    }
                };
                match outcome {
                    ToolOutcome::Finish { done, summary } => {
                        let status = if done {
                            EngineStatus::Done
                        } else {
                            EngineStatus::CannotDo
                        };
                        return report(status, summary, &usage, iterations);
                    }
                    ToolOutcome::Output(text) => results.push((call.id.clone(), text)),
                }
            }
            messages.push(Message::ToolResults(results));
        }
        if let Some(status) = budget_spent(budget, &usage) {
            return report(status, String::new(), &usage, iterations);
        }
        if usage.input_tokens + usage.output_tokens > limits.max_tokens {
            return report(
                EngineStatus::LimitReached(format!("token budget of {} spent", limits.max_tokens)),
                String::new(),
                &usage,
                iterations,
            );
        }
    }
    report(
        EngineStatus::LimitReached(format!(
            "{} iterations without finish",
            limits.max_iterations
        )),
        String::new(),
        &usage,
        iterations,
    )
}

/// Exit code by which an external agent says the task cannot be done.
pub const EXTERNAL_CANNOT_DO: i32 = 3;

/// Credentials an external agent CLI gets besides the allowed ones: it needs an LLM key, and
/// whatever it gets, the commands it runs can read.
pub const EXTERNAL_AGENT_KEYS: &[&str] = &[vars::OPENAI_API_KEY, vars::ANTHROPIC_API_KEY];

/// How much of the end of an external agent's output becomes the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    /// Non-empty lines.
    pub lines: usize,
    /// Bytes.
    pub bytes: usize,
}

impl Tail {
    /// The summary of the work.
    pub const WORK: Tail = Tail {
        lines: 20,
        bytes: 1500,
    };
    /// A planning run's plan.
    pub const PLAN: Tail = Tail {
        lines: 100,
        bytes: recac_api::agent_contract::MAX_PLAN_BYTES,
    };
}

/// Runs an external agent CLI in the workspace. The prompt is in a file outside the workspace
/// whose path is in `RECAC_PROMPT_FILE`; of the credentials it gets only the LLM keys
/// ([`EXTERNAL_AGENT_KEYS`]) and the allowed ones, never the git token. Exit 0 means done, 3
/// means it cannot be done, anything else is a retryable failure. The last lines of its output
/// (as much as `tail` says) become the summary; a Claude Code result object's `result` text
/// does instead, when it prints one. What it reports it spent ([`usage::reported`]) is kept.
pub async fn run_external(
    ext: &ExternalSettings,
    workspace: &Path,
    prompt: &str,
    max_duration: Duration,
    redactor: &Redactor,
    child_env: &ChildEnv,
    tail: Tail,
) -> EngineReport {
    let fail = |permanent, message: String| EngineReport {
        status: EngineStatus::Failed { permanent, message },
        summary: String::new(),
        usage: TokenUsage::default(),
        iterations: 0,
        reported: None,
    };
    let holder = match tempfile::Builder::new().prefix("recac-prompt-").tempdir() {
        Ok(h) => h,
        Err(e) => return fail(false, format!("cannot create the prompt file: {e}")),
    };
    let prompt_file = holder.path().join("prompt.md");
    if let Err(e) = std::fs::write(&prompt_file, prompt) {
        return fail(false, format!("cannot write the prompt file: {e}"));
    }
    let args: Vec<&str> = ext.args.iter().map(String::as_str).collect();
    let mut spec = CommandSpec::new(ext.command.clone(), &args, workspace, max_duration);
    spec.env = vec![
        (
            vars::PROMPT_FILE.into(),
            prompt_file.to_string_lossy().into_owned(),
        ),
        (
            vars::WORKSPACE.into(),
            workspace.to_string_lossy().into_owned(),
        ),
    ];
    child_env.apply_passing(&mut spec, EXTERNAL_AGENT_KEYS);
    tracing::info!(command = %ext.command, "running the external agent");
    let out = match process::run(&spec).await {
        Ok(out) => out,
        Err(e) => {
            return fail(
                true,
                format!("cannot start the agent command `{}`: {e}", ext.command),
            );
        }
    };
    let stdout = redactor.redact_bytes(&out.stdout);
    let stderr = redactor.redact_bytes(&out.stderr);
    for line in process::cap(&stdout, 16_384).lines() {
        tracing::info!(target: "recac::agent_output", "{line}");
    }
    for line in process::cap(&stderr, 16_384).lines() {
        tracing::info!(target: "recac::agent_output", stream = "stderr", "{line}");
    }
    let summary = match usage::result_text(&stdout) {
        Some(text) => last_lines(&text, tail.lines, tail.bytes),
        None => last_lines(&stdout, tail.lines, tail.bytes),
    };
    let fallback_model = ext.model.clone().unwrap_or_else(|| {
        Path::new(&ext.command)
            .file_name()
            .map_or_else(|| ext.command.clone(), |n| n.to_string_lossy().into_owned())
    });
    let reported = usage::reported(&stdout, &fallback_model);
    if let Some(models) = &reported {
        let spent = usage::totals(models);
        tracing::info!(
            input_tokens = spent.input_tokens,
            output_tokens = spent.output_tokens,
            "the external agent reported its usage"
        );
    }
    let status = match (out.timed_out, out.exit_code) {
        (true, _) => EngineStatus::LimitReached("wall-clock limit".into()),
        (false, Some(0)) => EngineStatus::Done,
        (false, Some(EXTERNAL_CANNOT_DO)) => EngineStatus::CannotDo,
        (false, code) => EngineStatus::Failed {
            permanent: false,
            message: format!(
                "the agent command exited with {}: {}",
                code.map_or("a signal".to_string(), |c| c.to_string()),
                last_lines(&stderr, 10, 800)
            ),
        },
    };
    EngineReport {
        status,
        summary,
        usage: reported.as_deref().map(usage::totals).unwrap_or_default(),
        iterations: 1,
        reported,
    }
}

/// The last `n` non-empty lines of `text`, at most `max` bytes (kept from the end).
fn last_lines(text: &str, n: usize, max: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let joined = lines[lines.len().saturating_sub(n)..].join("\n");
    if joined.len() <= max {
        return joined;
    }
    let mut start = joined.len() - max;
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    joined[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(last_lines("abcdef", 5, 3), "def");
        assert_eq!(last_lines("", 5, 3), "");
    }
}
