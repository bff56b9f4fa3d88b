//! The agent's settings, read from environment variables (typed, validated; every error names
//! the variable at fault).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use recac_api::agent_contract::MODE_PLAN;
use recac_api::agent_contract::env as contract;
use recac_api::repo_host::HostScope;

use crate::budget::{self, Budget, Prices};
use crate::git::{SshKey, SshSettings};
use crate::secrets::{self, ChildEnv, SecretFiles};

/// Environment variable names beyond the contract's (which are re-exported here for one list).
pub mod vars {
    pub use recac_api::agent_contract::env::*;
    pub const ENGINE: &str = "RECAC_ENGINE";
    pub const OPENAI_API_KEY: &str = "OPENAI_API_KEY";
    pub const OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";
    pub const ANTHROPIC_API_KEY: &str = "ANTHROPIC_API_KEY";
    pub const ANTHROPIC_BASE_URL: &str = "ANTHROPIC_BASE_URL";
    pub const MAX_ITERATIONS: &str = "RECAC_MAX_ITERATIONS";
    pub const MAX_TOKENS: &str = "RECAC_MAX_TOKENS";
    pub const MAX_DURATION_SECS: &str = "RECAC_MAX_DURATION_SECS";
    pub const MAX_OUTPUT_TOKENS: &str = "RECAC_MAX_OUTPUT_TOKENS";
    pub const COMMAND_TIMEOUT_SECS: &str = "RECAC_COMMAND_TIMEOUT_SECS";
    pub const COMMAND_OUTPUT_LIMIT: &str = "RECAC_COMMAND_OUTPUT_LIMIT";
    pub const LLM_MAX_RETRIES: &str = "RECAC_LLM_MAX_RETRIES";
    pub const LLM_RETRY_BASE_MS: &str = "RECAC_LLM_RETRY_BASE_MS";
    pub const AGENT_COMMAND: &str = "RECAC_AGENT_COMMAND";
    pub const AGENT_ARGS: &str = "RECAC_AGENT_ARGS";
    pub const GIT_TOKEN: &str = "RECAC_GIT_TOKEN";
    pub const GITHUB_TOKEN: &str = "GITHUB_TOKEN";
    pub const GIT_USERNAME: &str = "RECAC_GIT_USERNAME";
    pub const GIT_AUTHOR_NAME: &str = "RECAC_GIT_AUTHOR_NAME";
    pub const GIT_AUTHOR_EMAIL: &str = "RECAC_GIT_AUTHOR_EMAIL";
    pub const TEST_COMMAND: &str = "RECAC_TEST_COMMAND";
    pub const TEST_TIMEOUT_SECS: &str = "RECAC_TEST_TIMEOUT_SECS";
    pub const PULL_REQUEST: &str = "RECAC_PULL_REQUEST";
    pub const GITHUB_API_URL: &str = "RECAC_GITHUB_API_URL";
    pub const GITHUB_REPOSITORY: &str = "RECAC_GITHUB_REPOSITORY";
    pub use recac_api::agent_contract::secret_keys::SSH_PRIVATE_KEY;
}

/// The GitHub API when `RECAC_GITHUB_API_URL` is not set.
const DEFAULT_GITHUB_API_URL: &str = "https://api.github.com";

/// Variables whose values are credentials: removed from child processes the model controls
/// and redacted from all output. Every key of a Secret under `RECAC_SECRETS_DIR` is treated the
/// same way.
pub const SECRET_VARS: &[&str] = &[
    vars::GIT_TOKEN,
    vars::GITHUB_TOKEN,
    vars::OPENAI_API_KEY,
    vars::ANTHROPIC_API_KEY,
    vars::SSH_PRIVATE_KEY,
];

/// Credentials the agent does not use itself but may find in its environment (the Jira ones
/// `recac start --jira` reads): withheld and redacted like [`SECRET_VARS`].
pub const OTHER_CREDENTIAL_VARS: &[&str] = &["JIRA_API_TOKEN", "JIRA_PAT"];

/// Every variable `recac start` reads: (name, default, meaning). `recac start --help` prints it.
pub const ENV_DOCS: &[(&str, &str, &str)] = &[
    (
        contract::TASK,
        "-",
        "The AgentTask's name (set by the operator; used in logs).",
    ),
    (
        contract::ATTEMPT,
        "1",
        "The attempt number (set by the operator).",
    ),
    (
        contract::REPO_URL,
        "required",
        "The repository to clone (https://, ssh or file:// URL, without credentials).",
    ),
    (
        contract::BASE_BRANCH,
        "remote's default branch",
        "The branch new work starts from.",
    ),
    (
        contract::BRANCH,
        "recac/<ticket or prompt slug>",
        "The feature branch; continued if it already exists on the remote.",
    ),
    (
        contract::TICKET,
        "-",
        "The ticket key; named in the commit message and pull request.",
    ),
    (
        contract::PROMPT,
        "-",
        "What the agent must do (this or RECAC_PROMPT_FILE is required).",
    ),
    (
        contract::PROMPT_FILE,
        "-",
        "A file holding the prompt (wins over RECAC_PROMPT).",
    ),
    (
        contract::MODE,
        "unset: do the work",
        "`plan`: a planning run: the engine reads the repository and writes a plan (reported as outcome `planned`); nothing is committed or pushed (set by the operator; read from the environment only).",
    ),
    (
        vars::ENGINE,
        "builtin (external when RECAC_AGENT_COMMAND is set)",
        "`builtin` (LLM tool-use loop) or `external` (an agent CLI).",
    ),
    (
        contract::PROVIDER,
        "openai (anthropic when only ANTHROPIC_API_KEY is set)",
        "`openai` (any Chat Completions API) or `anthropic` (Messages API).",
    ),
    (
        contract::MODEL,
        "required for builtin",
        "The model name, e.g. gpt-4.1 or claude-sonnet-4-5.",
    ),
    (
        vars::OPENAI_API_KEY,
        "-",
        "API key for the openai provider (optional with a custom OPENAI_BASE_URL, e.g. Ollama).",
    ),
    (
        vars::OPENAI_BASE_URL,
        "https://api.openai.com/v1",
        "Chat Completions base URL (OpenRouter, Ollama, vLLM ...).",
    ),
    (
        vars::ANTHROPIC_API_KEY,
        "-",
        "API key for the anthropic provider.",
    ),
    (
        vars::ANTHROPIC_BASE_URL,
        "https://api.anthropic.com",
        "Messages API base URL.",
    ),
    (
        vars::MAX_ITERATIONS,
        "50",
        "Built-in engine: most model turns.",
    ),
    (
        vars::MAX_TOKENS,
        "2000000",
        "Built-in engine: most tokens (input + output) spent in total.",
    ),
    (
        vars::MAX_DURATION_SECS,
        "3600",
        "Wall-clock limit of the work step (both engines).",
    ),
    (
        vars::MAX_OUTPUT_TOKENS,
        "8192",
        "Built-in engine: most tokens in one model reply.",
    ),
    (
        contract::DEADLINE,
        "-",
        "When the Job's deadline stops the pod at the earliest (RFC 3339, set by the operator): the work ends RECAC_DEADLINE_MARGIN_SECONDS before it, its work in progress is pushed and the result is `partial` (cause `deadline`, exit 1). A deadline in the past ends the work at once. Read from the environment only.",
    ),
    (
        contract::DEADLINE_MARGIN_SECONDS,
        "60",
        "How many seconds before RECAC_DEADLINE the work ends, to commit, push and report.",
    ),
    (
        contract::BUDGET_TOKENS,
        "-",
        "What is left of the task's budget in tokens (input + output; set by the operator): the built-in engine stops when it is spent, pushes its work and reports `partial` (cause `budget`, exit 3). Read from the environment only.",
    ),
    (
        contract::BUDGET_INPUT_TOKENS,
        "-",
        "As RECAC_BUDGET_TOKENS, for input tokens.",
    ),
    (
        contract::BUDGET_OUTPUT_TOKENS,
        "-",
        "As RECAC_BUDGET_TOKENS, for output tokens; also caps each reply's max tokens.",
    ),
    (
        contract::BUDGET_COST,
        "-",
        "What is left of the task's budget in money (a decimal number in RECAC_BUDGET_CURRENCY, e.g. 1.25); counted by the built-in engine from the RECAC_PRICE_* prices (without them it cannot be counted).",
    ),
    (
        contract::BUDGET_CURRENCY,
        "-",
        "The currency code of RECAC_BUDGET_COST and the prices (e.g. USD).",
    ),
    (
        contract::PRICE_INPUT_PER_MILLION,
        "-",
        "The model's price per million input tokens (decimal; set together with RECAC_PRICE_OUTPUT_PER_MILLION): the result reports the cost.",
    ),
    (
        contract::PRICE_OUTPUT_PER_MILLION,
        "-",
        "The model's price per million output tokens (decimal).",
    ),
    (
        vars::COMMAND_TIMEOUT_SECS,
        "600",
        "Built-in engine: timeout of one run_command.",
    ),
    (
        vars::COMMAND_OUTPUT_LIMIT,
        "16384",
        "Bytes of command output shown to the model (head and tail kept).",
    ),
    (
        vars::LLM_MAX_RETRIES,
        "5",
        "Retries of a model call on 429, 5xx, network errors or malformed replies.",
    ),
    (
        vars::LLM_RETRY_BASE_MS,
        "1000",
        "First retry delay (doubles each time; Retry-After wins).",
    ),
    (
        vars::AGENT_COMMAND,
        "-",
        "External engine: the agent CLI to run in the workspace.",
    ),
    (
        vars::AGENT_ARGS,
        "-",
        "External engine: its arguments, a JSON array or whitespace-separated.",
    ),
    (
        contract::SECRETS_DIR,
        "-",
        "Folder of the Secrets mounted as files (<folder>/<secret>/<key>, set by the operator): every key named like a variable is a setting (a non-empty environment variable of the same name wins), every value is redacted.",
    ),
    (
        contract::SECRETS_SOCKET,
        "-",
        "The secret broker's unix socket (set by the operator when the pod has the `secrets` sidecar, which alone mounts the task's Secrets): the agent reads every Secret key from it once, at start, instead of from RECAC_SECRETS_DIR, then makes itself non-dumpable.",
    ),
    (
        contract::SECRET_ENV_ALLOW,
        "-",
        "Comma-separated Secret keys that test and model-run commands may see; every other credential is withheld (RECAC_GIT_TOKEN and GITHUB_TOKEN always are).",
    ),
    (
        vars::GIT_TOKEN,
        "-",
        "Token for git over HTTPS (and the GitHub API); given to git only through a credential helper scoped to RECAC_GIT_CREDENTIAL_HOSTS.",
    ),
    (vars::GITHUB_TOKEN, "-", "Alias of RECAC_GIT_TOKEN."),
    (
        contract::GIT_CREDENTIAL_HOSTS,
        "the GitHub web host of RECAC_GITHUB_API_URL (github.com)",
        "Comma-separated host[:port][/organisation] scopes the git token is for: git gets it only over HTTPS and only for a repository within one of them; `none`: no host (set by the operator from agent.gitCredentialHosts; read from the environment only).",
    ),
    (
        contract::CA_BUNDLE,
        "-",
        "A PEM file of extra certificate authorities that git and the model client trust besides the system's.",
    ),
    (
        vars::SSH_PRIVATE_KEY,
        "-",
        "The private key (OpenSSH or PEM, no passphrase) for ssh:// and git@host:path repositories, normally a key of one of the task's Secrets: offered only to repositories within RECAC_GIT_CREDENTIAL_HOSTS, from a private copy under TMPDIR; never passed to the commands the model runs.",
    ),
    (
        contract::SSH_KNOWN_HOSTS,
        "ssh's own (~/.ssh/known_hosts)",
        "A known_hosts file: the SSH host keys git accepts (an unknown or changed host key is refused, never accepted); set by the operator from agent.ssh.knownHosts; read from the environment only.",
    ),
    (
        vars::GIT_USERNAME,
        "x-access-token",
        "User name sent with the git token.",
    ),
    (
        vars::GIT_AUTHOR_NAME,
        "recac",
        "Commit author and committer name.",
    ),
    (
        vars::GIT_AUTHOR_EMAIL,
        "recac@users.noreply.github.com",
        "Commit author and committer email.",
    ),
    (
        vars::TEST_COMMAND,
        "detected",
        "Test command (run with sh -c in the workspace); detected from Makefile, Cargo.toml, package.json, pyproject.toml or go.mod when unset; `none` skips tests.",
    ),
    (
        vars::TEST_TIMEOUT_SECS,
        "1800",
        "Timeout of the test command.",
    ),
    (
        contract::RESULT_PATH,
        "/dev/termination-log",
        "Where the result JSON is written (kept under 4096 bytes).",
    ),
    (
        vars::WORKSPACE,
        "a new temporary directory",
        "Directory to clone into (must be empty or absent).",
    ),
    (
        vars::PULL_REQUEST,
        "auto",
        "`auto` (open one when the remote is on GitHub and a token is set), `true` or `false`.",
    ),
    (
        vars::GITHUB_API_URL,
        "https://api.github.com",
        "GitHub REST API base (GitHub Enterprise: https://HOST/api/v3).",
    ),
    (
        vars::GITHUB_REPOSITORY,
        "from the remote URL",
        "owner/name of the GitHub repository for pull requests.",
    ),
];

/// A setting that is missing or invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{var} is required: {hint}")]
    Missing { var: String, hint: String },
    #[error("{var} is invalid: {reason}")]
    Invalid { var: String, reason: String },
    #[error("cannot read the prompt file named by {var}: {reason}")]
    PromptFile { var: String, reason: String },
    #[error("{var}: {reason}")]
    Secrets { var: String, reason: String },
}

/// The LLM API shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI-compatible Chat Completions.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// How the built-in engine reaches its model.
#[derive(Clone, Debug)]
pub struct LlmSettings {
    pub provider: Provider,
    pub model: String,
    pub api_key: Option<String>,
    pub base_url: String,
    pub max_output_tokens: u32,
    pub max_retries: u32,
    pub retry_base: Duration,
    /// Extra certificate authorities (PEM) the client trusts besides the system's.
    pub ca_bundle: Option<PathBuf>,
}

/// The agent CLI the external engine runs.
#[derive(Clone, Debug)]
pub struct ExternalSettings {
    pub command: String,
    pub args: Vec<String>,
    /// `RECAC_MODEL`, when set: names the model in the usage the CLI reports when its output
    /// does not (else the command's name does).
    pub model: Option<String>,
}

/// Which engine does the work.
#[derive(Clone, Debug)]
pub enum EngineSettings {
    Builtin(LlmSettings),
    External(ExternalSettings),
}

/// Limits of the work step.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_iterations: u32,
    pub max_tokens: u64,
    pub max_duration: Duration,
    pub command_timeout: Duration,
    pub output_limit: usize,
}

/// The default of `RECAC_DEADLINE_MARGIN_SECONDS`.
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_secs(60);

/// What a run does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The work: change, test, commit, push (`RECAC_MODE` unset or empty).
    #[default]
    Work,
    /// A plan of the work, reported in the result; nothing is committed or pushed
    /// (`RECAC_MODE=plan`).
    Plan,
}

impl Mode {
    /// The mode `RECAC_MODE` names; `None` (or only spaces) is [`Mode::Work`].
    pub fn parse(raw: Option<&str>) -> Result<Self, SettingsError> {
        match raw.map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(Mode::Work),
            Some(v) if v.eq_ignore_ascii_case(MODE_PLAN) => Ok(Mode::Plan),
            Some(other) => Err(SettingsError::Invalid {
                var: contract::MODE.into(),
                reason: format!(
                    "`{other}` is not a mode: set it to `{}` for a planning run, or leave it unset (or empty) to do the work",
                    MODE_PLAN
                ),
            }),
        }
    }
}

/// Whether to open a pull request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullRequestMode {
    Auto,
    Always,
    Never,
}

/// Everything `recac start` needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub task: Option<String>,
    pub attempt: u32,
    pub repo_url: String,
    pub base_branch: Option<String>,
    pub branch: Option<String>,
    pub ticket: Option<String>,
    pub prompt: String,
    /// The work, or a plan of it.
    pub mode: Mode,
    pub engine: EngineSettings,
    pub limits: Limits,
    /// When the Job's deadline stops the pod at the earliest.
    pub deadline: Option<SystemTime>,
    /// How long before [`Settings::deadline`] the work ends.
    pub deadline_margin: Duration,
    /// What is left of the task's budget, and the model's prices.
    pub budget: Budget,
    pub git_token: Option<String>,
    pub git_username: String,
    /// The hosts (and organisations) the git token is for.
    pub git_credential_hosts: Vec<HostScope>,
    /// Extra certificate authorities (PEM) for git and the model client.
    pub ca_bundle: Option<PathBuf>,
    /// How git reaches ssh remotes: known hosts and the private key (with the git token's
    /// scopes).
    pub ssh: SshSettings,
    pub author_name: String,
    pub author_email: String,
    /// `None`: detect; `Some("")` never happens (`none` disables tests: see `skip_tests`).
    pub test_command: Option<String>,
    pub skip_tests: bool,
    pub test_timeout: Duration,
    pub result_path: PathBuf,
    pub workspace: Option<PathBuf>,
    pub pull_request: PullRequestMode,
    pub github_api_url: String,
    pub github_repository: Option<String>,
    /// What the commands the model can influence get of the credentials.
    pub child_env: ChildEnv,
    secret_values: SecretValues,
}

/// Every credential value the settings came with (never printed).
#[derive(Clone, Default)]
struct SecretValues(Vec<Vec<u8>>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} values", self.0.len())
    }
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (a variable name to its value). Empty values count
    /// as unset.
    ///
    /// When `RECAC_SECRETS_DIR` names a folder, the keys of the Secrets mounted there are read
    /// too, and a key named like a variable is a setting of that name; a non-empty value from
    /// `lookup` wins over it (as `env` won over `envFrom`, so a Secret cannot change what the
    /// operator set).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let files = secret_files(&lookup)?;
        Self::with_secret_files(lookup, files)
    }

    /// As [`Settings::from_lookup`], with the task's Secrets given (from the secret broker,
    /// [`crate::broker::fetch`]) instead of read from `RECAC_SECRETS_DIR`, which is ignored.
    pub fn with_secret_files(
        lookup: impl Fn(&str) -> Option<String>,
        files: SecretFiles,
    ) -> Result<Self, SettingsError> {
        let get = |name: &str| {
            nonempty(lookup(name)).or_else(|| nonempty(files.get(name).map(str::to_string)))
        };

        let repo_url = get(contract::REPO_URL).ok_or_else(|| SettingsError::Missing {
            var: contract::REPO_URL.into(),
            hint: "the repository to clone (or pass --repo)".into(),
        })?;
        // A user name in an ssh URL (`ssh://git@host/...`) is the login, not a credential.
        if let Ok(parsed) = url::Url::parse(&repo_url)
            && (parsed.password().is_some()
                || (!parsed.username().is_empty() && parsed.scheme() != "ssh"))
        {
            return Err(SettingsError::Invalid {
                var: contract::REPO_URL.into(),
                reason: "it must not carry credentials; set RECAC_GIT_TOKEN instead".into(),
            });
        }

        let prompt = match get(contract::PROMPT_FILE) {
            Some(path) => {
                std::fs::read_to_string(&path).map_err(|e| SettingsError::PromptFile {
                    var: contract::PROMPT_FILE.into(),
                    reason: e.to_string(),
                })?
            }
            None => get(contract::PROMPT).unwrap_or_default(),
        };
        if prompt.trim().is_empty() {
            return Err(SettingsError::Missing {
                var: contract::PROMPT.into(),
                hint: "what the agent must do (or RECAC_PROMPT_FILE, or --prompt)".into(),
            });
        }

        // The mode is the operator's: read from the environment only, never a Secret.
        let mode = Mode::parse(lookup(contract::MODE).as_deref())?;
        let attempt = parse_num(&get, contract::ATTEMPT, 1u32)?;
        let limits = Limits {
            max_iterations: parse_num(&get, vars::MAX_ITERATIONS, 50u32)?,
            max_tokens: parse_num(&get, vars::MAX_TOKENS, 2_000_000u64)?,
            max_duration: Duration::from_secs(parse_num(&get, vars::MAX_DURATION_SECS, 3600u64)?),
            command_timeout: Duration::from_secs(parse_num(
                &get,
                vars::COMMAND_TIMEOUT_SECS,
                600u64,
            )?),
            output_limit: parse_num(&get, vars::COMMAND_OUTPUT_LIMIT, 16_384usize)?,
        };
        for (var, zero) in [
            (vars::MAX_ITERATIONS, limits.max_iterations == 0),
            (vars::MAX_DURATION_SECS, limits.max_duration.is_zero()),
            (vars::COMMAND_TIMEOUT_SECS, limits.command_timeout.is_zero()),
            (vars::COMMAND_OUTPUT_LIMIT, limits.output_limit < 256),
        ] {
            if zero {
                return Err(SettingsError::Invalid {
                    var: var.into(),
                    reason: "too small".into(),
                });
            }
        }

        // The deadline and the budget are the operator's: read from the environment only.
        let deadline = parse_deadline(&lookup)?;
        let deadline_margin = match parse_opt_num(&lookup, contract::DEADLINE_MARGIN_SECONDS)? {
            Some(seconds) => Duration::from_secs(seconds),
            None => DEFAULT_DEADLINE_MARGIN,
        };
        let budget = parse_budget(&lookup)?;

        let agent_command = get(vars::AGENT_COMMAND);
        let engine_name = get(vars::ENGINE).unwrap_or_else(|| {
            if agent_command.is_some() {
                "external"
            } else {
                "builtin"
            }
            .to_string()
        });
        let engine = match engine_name.to_ascii_lowercase().as_str() {
            "builtin" | "built-in" | "llm" => EngineSettings::Builtin(llm_settings(&get)?),
            "external" => {
                let command = agent_command.ok_or_else(|| SettingsError::Missing {
                    var: vars::AGENT_COMMAND.into(),
                    hint: "the agent CLI the external engine runs".into(),
                })?;
                let args = match get(vars::AGENT_ARGS) {
                    None => Vec::new(),
                    Some(raw) => parse_args(&raw).map_err(|reason| SettingsError::Invalid {
                        var: vars::AGENT_ARGS.into(),
                        reason,
                    })?,
                };
                EngineSettings::External(ExternalSettings {
                    command,
                    args,
                    model: get(contract::MODEL),
                })
            }
            other => {
                return Err(SettingsError::Invalid {
                    var: vars::ENGINE.into(),
                    reason: format!("`{other}` is neither `builtin` nor `external`"),
                });
            }
        };

        let pull_request = match get(vars::PULL_REQUEST)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("auto") => PullRequestMode::Auto,
            Some("true" | "yes" | "1" | "always") => PullRequestMode::Always,
            Some("false" | "no" | "0" | "never") => PullRequestMode::Never,
            Some(other) => {
                return Err(SettingsError::Invalid {
                    var: vars::PULL_REQUEST.into(),
                    reason: format!("`{other}` is not one of auto, true, false"),
                });
            }
        };
        let github_api_url =
            get(vars::GITHUB_API_URL).unwrap_or_else(|| DEFAULT_GITHUB_API_URL.into());
        check_url(vars::GITHUB_API_URL, &github_api_url)?;
        let git_credential_hosts = credential_scopes(&lookup, &github_api_url)?;
        let ssh = ssh_settings(&lookup, &get, git_credential_hosts.clone())?;
        let ca_bundle = get(contract::CA_BUNDLE).map(PathBuf::from);
        if let Some(path) = &ca_bundle
            && let Err(e) = std::fs::metadata(path)
        {
            return Err(SettingsError::Invalid {
                var: contract::CA_BUNDLE.into(),
                reason: format!("cannot read {}: {e}", path.display()),
            });
        }
        let github_repository = get(vars::GITHUB_REPOSITORY);
        if let Some(repo) = &github_repository
            && repo.split('/').filter(|p| !p.is_empty()).count() != 2
        {
            return Err(SettingsError::Invalid {
                var: vars::GITHUB_REPOSITORY.into(),
                reason: "expected owner/name".into(),
            });
        }

        let test_command = get(vars::TEST_COMMAND);
        let skip_tests = test_command
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case("none"));

        // The allow list is the operator's: read from the environment only, never a Secret.
        let allow = match nonempty(lookup(contract::SECRET_ENV_ALLOW)) {
            None => Default::default(),
            Some(raw) => secrets::parse_allow(&raw).map_err(|reason| SettingsError::Invalid {
                var: contract::SECRET_ENV_ALLOW.into(),
                reason,
            })?,
        };
        let credential_names: Vec<&str> = SECRET_VARS
            .iter()
            .chain(OTHER_CREDENTIAL_VARS)
            .copied()
            .chain(files.names())
            .collect();
        let child_env = ChildEnv::new(credential_names.iter().copied(), allow, get);
        let mut secret_values: Vec<Vec<u8>> = SECRET_VARS
            .iter()
            .chain(OTHER_CREDENTIAL_VARS)
            .filter_map(|n| get(n))
            .map(String::into_bytes)
            .collect();
        secret_values.extend(files.values().iter().cloned());

        Ok(Settings {
            task: get(contract::TASK),
            attempt,
            repo_url,
            base_branch: get(contract::BASE_BRANCH),
            branch: get(contract::BRANCH),
            ticket: get(contract::TICKET),
            prompt,
            mode,
            engine,
            limits,
            deadline,
            deadline_margin,
            budget,
            git_token: get(vars::GIT_TOKEN).or_else(|| get(vars::GITHUB_TOKEN)),
            git_username: get(vars::GIT_USERNAME).unwrap_or_else(|| "x-access-token".into()),
            git_credential_hosts,
            ca_bundle,
            ssh,
            author_name: get(vars::GIT_AUTHOR_NAME).unwrap_or_else(|| "recac".into()),
            author_email: get(vars::GIT_AUTHOR_EMAIL)
                .unwrap_or_else(|| "recac@users.noreply.github.com".into()),
            test_command: if skip_tests { None } else { test_command },
            skip_tests,
            test_timeout: Duration::from_secs(parse_num(&get, vars::TEST_TIMEOUT_SECS, 1800u64)?),
            result_path: get(contract::RESULT_PATH)
                .unwrap_or_else(|| "/dev/termination-log".into())
                .into(),
            workspace: get(vars::WORKSPACE).map(PathBuf::from),
            pull_request,
            github_api_url,
            github_repository,
            child_env,
            secret_values: SecretValues(secret_values),
        })
    }

    /// Every credential value these settings came with, for the redactor: the known credential
    /// variables and every value of every Secret file.
    pub fn secrets(&self) -> Vec<Vec<u8>> {
        self.secret_values.0.clone()
    }
}

/// The Secrets under the folder `RECAC_SECRETS_DIR` names (none when unset).
fn secret_files(lookup: &impl Fn(&str) -> Option<String>) -> Result<SecretFiles, SettingsError> {
    let Some(dir) = nonempty(lookup(contract::SECRETS_DIR)) else {
        return Ok(SecretFiles::default());
    };
    SecretFiles::read(Path::new(&dir)).map_err(|e| SettingsError::Secrets {
        var: contract::SECRETS_DIR.into(),
        reason: e.to_string(),
    })
}

/// The git token's (and the SSH key's) scopes. They are the operator's: read from the
/// environment only, never a Secret. Unset: the web host of the GitHub API.
fn credential_scopes(
    lookup: &impl Fn(&str) -> Option<String>,
    github_api_url: &str,
) -> Result<Vec<HostScope>, SettingsError> {
    Ok(match nonempty(lookup(contract::GIT_CREDENTIAL_HOSTS)) {
        Some(none) if none.eq_ignore_ascii_case("none") => Vec::new(),
        Some(list) => HostScope::parse_list(&list).map_err(|e| SettingsError::Invalid {
            var: contract::GIT_CREDENTIAL_HOSTS.into(),
            reason: e.to_string(),
        })?,
        None => crate::github::web_host(github_api_url)
            .and_then(|host| HostScope::parse(&host).ok())
            .into_iter()
            .collect(),
    })
}

/// The SSH settings: the known hosts from the environment only (the operator's, like the
/// scopes), the private key from the environment or a Secret, each checked.
fn ssh_settings(
    lookup: &impl Fn(&str) -> Option<String>,
    get: &impl Fn(&str) -> Option<String>,
    key_scopes: Vec<HostScope>,
) -> Result<SshSettings, SettingsError> {
    let known_hosts = match nonempty(lookup(contract::SSH_KNOWN_HOSTS)) {
        None => None,
        Some(path) => {
            check_known_hosts(Path::new(&path)).map_err(|reason| SettingsError::Invalid {
                var: contract::SSH_KNOWN_HOSTS.into(),
                reason,
            })?;
            Some(PathBuf::from(path))
        }
    };
    let private_key = match get(vars::SSH_PRIVATE_KEY) {
        None => None,
        Some(text) => {
            check_private_key(&text).map_err(|reason| SettingsError::Invalid {
                var: vars::SSH_PRIVATE_KEY.into(),
                reason,
            })?;
            Some(SshKey::new(text))
        }
    };
    // With the egress allow-list on, ssh reaches the remote through the proxy too: the
    // pod's NetworkPolicy lets it reach nothing else.
    let proxy_command = nonempty(lookup(contract::EGRESS_PROXY)).and_then(|proxy| {
        let program = std::env::current_exe().ok()?;
        Some(crate::egress::ssh_proxy_command(&program, &proxy))
    });
    Ok(SshSettings {
        known_hosts,
        private_key,
        key_scopes,
        proxy_command,
    })
}

/// Checks a known_hosts file: a path ssh takes as one file, readable, with a host key line.
fn check_known_hosts(path: &Path) -> Result<(), String> {
    let shown = path.display().to_string();
    if shown
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '%' | '\\'))
        || shown.starts_with('~')
    {
        return Err(format!(
            "{shown:?} must be a path without spaces, quotes, `%`, `\\` or a leading `~` (ssh would read it as something else)"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let has_key = text.lines().any(|line| {
        let mut fields = line.split_whitespace().skip_while(|f| f.starts_with('@'));
        let (Some(hosts), Some(kind), Some(key)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        !hosts.starts_with('#')
            && (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
            && key.starts_with("AAAA")
    });
    if has_key {
        Ok(())
    } else {
        Err(format!(
            "{shown} holds no host key line (`HOST KEY-TYPE BASE64-KEY`, as `ssh-keyscan HOST` prints)"
        ))
    }
}

/// Checks a private key's form without ever printing it: OpenSSH or PEM, not a public key,
/// not protected by a passphrase (nothing could type it).
fn check_private_key(text: &str) -> Result<(), String> {
    let text = text.trim();
    let first = text.lines().next().unwrap_or("").trim();
    if ["ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-"]
        .iter()
        .any(|p| first.starts_with(p))
    {
        return Err(
            "this is a public key; the private key is needed (the file ssh-keygen wrote without `.pub`)"
                .into(),
        );
    }
    if !(first.starts_with("-----BEGIN ") && first.ends_with("PRIVATE KEY-----")) {
        return Err(
            "not a private key in OpenSSH or PEM form (its first line must be like `-----BEGIN OPENSSH PRIVATE KEY-----`)"
                .into(),
        );
    }
    let passphrase = || {
        "the key is protected by a passphrase, which nothing can type in the pod; use a key without one (a deploy key of the repository)".to_string()
    };
    if first.contains("ENCRYPTED") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(passphrase());
    }
    if first == "-----BEGIN OPENSSH PRIVATE KEY-----" {
        use base64::Engine as _;
        let body: String = text
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("-----END "))
            .flat_map(|l| l.trim().chars())
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| "the OpenSSH key's body is not base64".to_string())?;
        let rest = bytes
            .strip_prefix(b"openssh-key-v1\0")
            .ok_or_else(|| "not an OpenSSH private key (no openssh-key-v1 header)".to_string())?;
        let cipher = rest
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| rest.get(4..4 + n))
            .ok_or_else(|| "the OpenSSH key is cut short".to_string())?;
        if cipher != b"none" {
            return Err(passphrase());
        }
    }
    Ok(())
}

fn nonempty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Credential values found through `lookup` and under the `RECAC_SECRETS_DIR` it names, for a
/// redactor set up before the settings are read. Files that cannot be read are skipped here
/// ([`Settings::from_lookup`] reports them). A value that is not text is given as its lossy text
/// and its base64 form.
pub fn secrets_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let files = nonempty(lookup(contract::SECRETS_DIR))
        .map(|dir| SecretFiles::read_lenient(Path::new(&dir)))
        .unwrap_or_default();
    secret_texts(lookup, &files)
}

/// As [`secrets_from_lookup`], with the Secrets given (from the secret broker).
pub fn secret_texts(lookup: impl Fn(&str) -> Option<String>, files: &SecretFiles) -> Vec<String> {
    let mut out: Vec<String> = SECRET_VARS
        .iter()
        .chain(OTHER_CREDENTIAL_VARS)
        .filter_map(|v| nonempty(lookup(v)))
        .collect();
    for value in files.values() {
        match std::str::from_utf8(value) {
            Ok(text) => out.push(text.to_string()),
            Err(_) => {
                use base64::Engine as _;
                out.push(String::from_utf8_lossy(value).into_owned());
                out.push(base64::engine::general_purpose::STANDARD.encode(value));
            }
        }
    }
    out
}

fn llm_settings(get: &impl Fn(&str) -> Option<String>) -> Result<LlmSettings, SettingsError> {
    let provider = match get(contract::PROVIDER)
        .map(|p| p.to_ascii_lowercase())
        .as_deref()
    {
        Some("openai" | "openai-compatible" | "openrouter" | "ollama" | "vllm") => Provider::OpenAi,
        Some("anthropic") => Provider::Anthropic,
        Some(other) => {
            return Err(SettingsError::Invalid {
                var: contract::PROVIDER.into(),
                reason: format!("`{other}` is neither `openai` nor `anthropic`"),
            });
        }
        None if get(vars::ANTHROPIC_API_KEY).is_some() && get(vars::OPENAI_API_KEY).is_none() => {
            Provider::Anthropic
        }
        None => Provider::OpenAi,
    };
    let model = get(contract::MODEL).ok_or_else(|| SettingsError::Missing {
        var: contract::MODEL.into(),
        hint: "the model the built-in engine uses".into(),
    })?;
    let (key_var, url_var, default_url) = match provider {
        Provider::OpenAi => (
            vars::OPENAI_API_KEY,
            vars::OPENAI_BASE_URL,
            "https://api.openai.com/v1",
        ),
        Provider::Anthropic => (
            vars::ANTHROPIC_API_KEY,
            vars::ANTHROPIC_BASE_URL,
            "https://api.anthropic.com",
        ),
    };
    let base_url = get(url_var).unwrap_or_else(|| default_url.to_string());
    check_url(url_var, &base_url)?;
    let api_key = get(key_var);
    let custom_openai =
        provider == Provider::OpenAi && base_url.trim_end_matches('/') != default_url;
    if api_key.is_none() && !custom_openai {
        return Err(SettingsError::Missing {
            var: key_var.into(),
            hint: format!(
                "the API key of the {} provider",
                if provider == Provider::OpenAi {
                    "openai"
                } else {
                    "anthropic"
                }
            ),
        });
    }
    Ok(LlmSettings {
        provider,
        model,
        api_key,
        base_url: base_url.trim_end_matches('/').to_string(),
        max_output_tokens: parse_num(get, vars::MAX_OUTPUT_TOKENS, 8192u32)?,
        max_retries: parse_num(get, vars::LLM_MAX_RETRIES, 5u32)?,
        retry_base: Duration::from_millis(parse_num(get, vars::LLM_RETRY_BASE_MS, 1000u64)?),
        ca_bundle: get(contract::CA_BUNDLE).map(PathBuf::from),
    })
}

/// `RECAC_DEADLINE`, an RFC 3339 instant.
fn parse_deadline(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<SystemTime>, SettingsError> {
    let Some(raw) = nonempty(lookup(contract::DEADLINE)) else {
        return Ok(None);
    };
    let instant: jiff::Timestamp = raw.parse().map_err(|_| SettingsError::Invalid {
        var: contract::DEADLINE.into(),
        reason: format!("`{raw}` is not an RFC 3339 instant (e.g. 2026-01-01T12:00:00Z)"),
    })?;
    Ok(Some(SystemTime::from(instant)))
}

/// A whole number read through `lookup`, `None` when unset.
fn parse_opt_num(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Option<u64>, SettingsError> {
    nonempty(lookup(var))
        .map(|raw| {
            raw.replace('_', "")
                .parse()
                .map_err(|_| SettingsError::Invalid {
                    var: var.into(),
                    reason: format!("`{raw}` is not a non-negative whole number"),
                })
        })
        .transpose()
}

/// A decimal amount read through `lookup` as micro-units, `None` when unset.
fn parse_money(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Option<u64>, SettingsError> {
    nonempty(lookup(var))
        .map(|raw| {
            budget::parse_decimal(&raw).map_err(|e| SettingsError::Invalid {
                var: var.into(),
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// What is left of the task's budget and the model's prices (`RECAC_BUDGET_*`,
/// `RECAC_PRICE_*`).
fn parse_budget(lookup: &impl Fn(&str) -> Option<String>) -> Result<Budget, SettingsError> {
    let currency = nonempty(lookup(contract::BUDGET_CURRENCY));
    if let Some(code) = &currency
        && (code.len() > 10 || !code.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        return Err(SettingsError::Invalid {
            var: contract::BUDGET_CURRENCY.into(),
            reason: format!("`{code}` is not a currency code (letters, e.g. USD)"),
        });
    }
    let input = parse_money(lookup, contract::PRICE_INPUT_PER_MILLION)?;
    let output = parse_money(lookup, contract::PRICE_OUTPUT_PER_MILLION)?;
    let prices = match (input, output) {
        (Some(input_per_million), Some(output_per_million)) => Some(Prices {
            input_per_million,
            output_per_million,
        }),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            let (set, unset) = if input.is_some() {
                (
                    contract::PRICE_INPUT_PER_MILLION,
                    contract::PRICE_OUTPUT_PER_MILLION,
                )
            } else {
                (
                    contract::PRICE_OUTPUT_PER_MILLION,
                    contract::PRICE_INPUT_PER_MILLION,
                )
            };
            return Err(SettingsError::Invalid {
                var: unset.into(),
                reason: format!("it must be set together with {set}"),
            });
        }
    };
    Ok(Budget {
        tokens: parse_opt_num(lookup, contract::BUDGET_TOKENS)?,
        input_tokens: parse_opt_num(lookup, contract::BUDGET_INPUT_TOKENS)?,
        output_tokens: parse_opt_num(lookup, contract::BUDGET_OUTPUT_TOKENS)?,
        cost: parse_money(lookup, contract::BUDGET_COST)?,
        currency: currency.map(|c| c.to_ascii_uppercase()),
        prices,
    })
}

fn check_url(var: &str, value: &str) -> Result<(), SettingsError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(SettingsError::Invalid {
            var: var.into(),
            reason: "expected an http(s) URL".into(),
        }),
    }
}

fn parse_num<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    default: T,
) -> Result<T, SettingsError> {
    match get(var) {
        None => Ok(default),
        Some(raw) => raw
            .replace('_', "")
            .parse()
            .map_err(|_| SettingsError::Invalid {
                var: var.into(),
                reason: format!("`{raw}` is not a non-negative whole number"),
            }),
    }
}

/// Arguments given as a JSON array of strings or separated by whitespace.
pub fn parse_args(raw: &str) -> Result<Vec<String>, String> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        serde_json::from_str::<Vec<String>>(raw)
            .map_err(|e| format!("not a JSON array of strings: {e}"))
    } else {
        Ok(raw.split_whitespace().map(str::to_string).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        ("RECAC_REPO_URL", "https://github.com/o/r.git"),
        ("RECAC_PROMPT", "do it"),
        ("RECAC_MODEL", "m"),
        ("OPENAI_API_KEY", "sk-test"),
    ];

    #[test]
    fn defaults() {
        let s = settings(BASE).unwrap();
        assert_eq!(s.attempt, 1);
        assert_eq!(s.limits.max_iterations, 50);
        assert_eq!(s.result_path, PathBuf::from("/dev/termination-log"));
        assert_eq!(s.pull_request, PullRequestMode::Auto);
        let EngineSettings::Builtin(llm) = s.engine else {
            panic!("builtin")
        };
        assert_eq!(llm.provider, Provider::OpenAi);
        assert_eq!(llm.base_url, "https://api.openai.com/v1");
    }

    #[test]
    fn errors_name_the_variable() {
        let err = settings(&[("RECAC_PROMPT", "x")]).unwrap_err();
        assert!(err.to_string().contains("RECAC_REPO_URL"), "{err}");
        let err = settings(&[("RECAC_REPO_URL", "file:///r")]).unwrap_err();
        assert!(err.to_string().contains("RECAC_PROMPT"), "{err}");
        let mut v = BASE.to_vec();
        v.push(("RECAC_MAX_ITERATIONS", "lots"));
        assert!(
            settings(&v)
                .unwrap_err()
                .to_string()
                .contains("RECAC_MAX_ITERATIONS")
        );
        let err = settings(&BASE[..3]).unwrap_err();
        assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
        for url in [
            "ssh://u:p@github.com/o/r.git",
            "https://token@github.com/o/r.git",
        ] {
            let mut v = BASE.to_vec();
            v[0] = ("RECAC_REPO_URL", url);
            assert!(
                settings(&v)
                    .unwrap_err()
                    .to_string()
                    .contains("RECAC_REPO_URL"),
                "{url}"
            );
        }
        // An ssh login is not a credential.
        for url in ["ssh://git@github.com/o/r.git", "git@github.com:o/r.git"] {
            let mut v = BASE.to_vec();
            v[0] = ("RECAC_REPO_URL", url);
            assert_eq!(settings(&v).unwrap().repo_url, url);
        }
        let mut v = BASE.to_vec();
        v[0] = ("RECAC_REPO_URL", "https://u:p@github.com/o/r.git");
        assert!(
            settings(&v)
                .unwrap_err()
                .to_string()
                .contains("RECAC_REPO_URL")
        );
        let mut v = BASE.to_vec();
        v.push(("RECAC_PROVIDER", "gemini"));
        assert!(
            settings(&v)
                .unwrap_err()
                .to_string()
                .contains("RECAC_PROVIDER")
        );
    }

    #[test]
    fn deadline_and_budget_are_read_and_checked() {
        let s = settings(BASE).unwrap();
        assert_eq!(s.deadline, None);
        assert_eq!(s.deadline_margin, DEFAULT_DEADLINE_MARGIN);
        assert!(!s.budget.is_set() && s.budget.prices.is_none());

        let mut v = BASE.to_vec();
        v.extend_from_slice(&[
            ("RECAC_DEADLINE", "2026-03-01T12:00:00Z"),
            ("RECAC_DEADLINE_MARGIN_SECONDS", "90"),
            ("RECAC_BUDGET_TOKENS", "1_000_000"),
            ("RECAC_BUDGET_INPUT_TOKENS", "800000"),
            ("RECAC_BUDGET_OUTPUT_TOKENS", "200000"),
            ("RECAC_BUDGET_COST", "1.25"),
            ("RECAC_BUDGET_CURRENCY", "eur"),
            ("RECAC_PRICE_INPUT_PER_MILLION", "3"),
            ("RECAC_PRICE_OUTPUT_PER_MILLION", "15.5"),
        ]);
        let s = settings(&v).unwrap();
        let expected: jiff::Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
        assert_eq!(s.deadline, Some(SystemTime::from(expected)));
        assert_eq!(s.deadline_margin, Duration::from_secs(90));
        assert_eq!(
            s.budget,
            Budget {
                tokens: Some(1_000_000),
                input_tokens: Some(800_000),
                output_tokens: Some(200_000),
                cost: Some(1_250_000),
                currency: Some("EUR".into()),
                prices: Some(Prices {
                    input_per_million: 3_000_000,
                    output_per_million: 15_500_000,
                }),
            }
        );
        // A deadline in the past is fine (the work ends at once); so is an offset.
        let mut v = BASE.to_vec();
        v.push(("RECAC_DEADLINE", "2001-01-01T00:00:00+02:00"));
        assert!(settings(&v).unwrap().deadline.is_some());

        for (var, value) in [
            ("RECAC_DEADLINE", "tomorrow"),
            ("RECAC_DEADLINE", "2026-03-01 12:00"),
            ("RECAC_DEADLINE_MARGIN_SECONDS", "-5"),
            ("RECAC_BUDGET_TOKENS", "1.5"),
            ("RECAC_BUDGET_INPUT_TOKENS", "lots"),
            ("RECAC_BUDGET_OUTPUT_TOKENS", "-1"),
            ("RECAC_BUDGET_COST", "1,25"),
            ("RECAC_BUDGET_COST", "-2"),
            ("RECAC_BUDGET_CURRENCY", "US$"),
            ("RECAC_PRICE_INPUT_PER_MILLION", "3e2"),
        ] {
            let mut v = BASE.to_vec();
            v.push((var, value));
            if var == "RECAC_PRICE_INPUT_PER_MILLION" {
                v.push(("RECAC_PRICE_OUTPUT_PER_MILLION", "1"));
            }
            let err = settings(&v).unwrap_err();
            assert!(
                matches!(&err, SettingsError::Invalid { var: named, .. } if named == var),
                "{var}={value}: {err:?}"
            );
            assert!(err.to_string().contains(value), "{err}");
        }
        // One price without the other names the missing one.
        let mut v = BASE.to_vec();
        v.push(("RECAC_PRICE_INPUT_PER_MILLION", "3"));
        let err = settings(&v).unwrap_err().to_string();
        assert!(
            err.starts_with("RECAC_PRICE_OUTPUT_PER_MILLION") && err.contains("together"),
            "{err}"
        );
    }

    #[test]
    fn the_budget_is_never_read_from_a_secret() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("s")).unwrap();
        for (key, value) in [
            ("RECAC_BUDGET_TOKENS", "999999999"),
            ("RECAC_DEADLINE", "2100-01-01T00:00:00Z"),
        ] {
            std::fs::write(root.path().join("s").join(key), value).unwrap();
        }
        let dir = root.path().display().to_string();
        let mut v = BASE.to_vec();
        v.push(("RECAC_SECRETS_DIR", dir.as_str()));
        let s = settings(&v).unwrap();
        assert_eq!((s.budget.tokens, s.deadline), (None, None));
    }

    #[test]
    fn the_mode_is_work_unless_plan_is_asked_for() {
        assert_eq!(settings(BASE).unwrap().mode, Mode::Work);
        for (value, mode) in [
            ("", Mode::Work),
            ("  ", Mode::Work),
            ("plan", Mode::Plan),
            (" Plan ", Mode::Plan),
        ] {
            let mut v = BASE.to_vec();
            v.push(("RECAC_MODE", value));
            assert_eq!(settings(&v).unwrap().mode, mode, "{value:?}");
        }
        for value in ["bogus", "work", "planning"] {
            let mut v = BASE.to_vec();
            v.push(("RECAC_MODE", value));
            let err = settings(&v).unwrap_err();
            assert!(
                matches!(&err, SettingsError::Invalid { var, .. } if var == "RECAC_MODE"),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains("RECAC_MODE") && text.contains(value) && text.contains("`plan`"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_mode_is_never_read_from_a_secret() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("s")).unwrap();
        std::fs::write(root.path().join("s/RECAC_MODE"), "plan").unwrap();
        let dir = root.path().display().to_string();
        let mut v = BASE.to_vec();
        v.push(("RECAC_SECRETS_DIR", dir.as_str()));
        assert_eq!(settings(&v).unwrap().mode, Mode::Work);
    }

    #[test]
    fn anthropic_and_external_and_aliases() {
        let s = settings(&[
            ("RECAC_REPO_URL", "file:///r"),
            ("RECAC_PROMPT", "x"),
            ("RECAC_MODEL", "claude"),
            ("ANTHROPIC_API_KEY", "k-anthropic"),
            ("GITHUB_TOKEN", "gh-token"),
        ])
        .unwrap();
        let EngineSettings::Builtin(llm) = &s.engine else {
            panic!()
        };
        assert_eq!(llm.provider, Provider::Anthropic);
        assert_eq!(s.git_token.as_deref(), Some("gh-token"));
        assert_eq!(
            s.secrets(),
            vec![b"gh-token".to_vec(), b"k-anthropic".to_vec()]
        );

        let s = settings(&[
            ("RECAC_REPO_URL", "file:///r"),
            ("RECAC_PROMPT", "x"),
            ("RECAC_AGENT_COMMAND", "my-agent"),
            ("RECAC_AGENT_ARGS", r#"["--yes", "a b"]"#),
            ("RECAC_TEST_COMMAND", "none"),
        ])
        .unwrap();
        let EngineSettings::External(ext) = &s.engine else {
            panic!()
        };
        assert_eq!(ext.args, vec!["--yes", "a b"]);
        assert!(s.skip_tests);
    }

    #[test]
    fn ollama_needs_no_key() {
        let s = settings(&[
            ("RECAC_REPO_URL", "file:///r"),
            ("RECAC_PROMPT", "x"),
            ("RECAC_MODEL", "llama"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1/"),
        ])
        .unwrap();
        let EngineSettings::Builtin(llm) = &s.engine else {
            panic!()
        };
        assert_eq!(llm.base_url, "http://127.0.0.1:11434/v1");
        assert!(llm.api_key.is_none());
    }

    #[test]
    fn secret_files_are_settings_and_secrets() {
        let root = tempfile::tempdir().unwrap();
        let secrets = root.path().join("secrets");
        for (secret, key, value) in [
            ("creds", "OPENAI_API_KEY", "sk-file-key-0123456789\n"),
            ("creds", "RECAC_GIT_TOKEN", "git-token-from-file"),
            ("db", "DB_PASSWORD", "db-password-value"),
            ("db", "ca.crt", "not-a-variable-name"),
            ("db", "RECAC_MODEL", "model-from-secret"),
        ] {
            std::fs::create_dir_all(secrets.join(secret)).unwrap();
            std::fs::write(secrets.join(secret).join(key), value).unwrap();
        }
        let dir = secrets.display().to_string();
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v: Vec<(&str, &str)> = vec![
                ("RECAC_REPO_URL", "file:///r"),
                ("RECAC_PROMPT", "x"),
                ("RECAC_MODEL", "m"),
                ("RECAC_SECRETS_DIR", dir.as_str()),
            ];
            v.extend_from_slice(extra);
            settings(&v)
        };
        let s = with(&[("RECAC_SECRET_ENV_ALLOW", "DB_PASSWORD")]).unwrap();
        let EngineSettings::Builtin(llm) = &s.engine else {
            panic!()
        };
        assert_eq!(llm.api_key.as_deref(), Some("sk-file-key-0123456789"));
        assert_eq!(s.git_token.as_deref(), Some("git-token-from-file"));
        // The environment wins over a Secret.
        assert_eq!(llm.model, "m");
        let values = s.secrets();
        for v in [
            "sk-file-key-0123456789",
            "git-token-from-file",
            "db-password-value",
            "not-a-variable-name",
        ] {
            assert!(values.contains(&v.as_bytes().to_vec()), "{v}");
        }
        assert!(!format!("{s:?}").contains("db-password-value"));
        assert!(!s.child_env.withholds("DB_PASSWORD"));
        assert!(s.child_env.withholds("OPENAI_API_KEY") && s.child_env.withholds("RECAC_MODEL"));
        let early = secrets_from_lookup(|k| (k == "RECAC_SECRETS_DIR").then(|| dir.clone()));
        assert!(early.contains(&"not-a-variable-name".to_string()));

        let err = with(&[("RECAC_SECRET_ENV_ALLOW", "DB-PASSWORD")]).unwrap_err();
        assert!(err.to_string().contains("RECAC_SECRET_ENV_ALLOW"), "{err}");
        std::os::unix::fs::symlink("missing", secrets.join("db/BROKEN")).unwrap();
        let err = with(&[]).unwrap_err().to_string();
        assert!(
            err.contains("RECAC_SECRETS_DIR") && err.contains("db/BROKEN"),
            "{err}"
        );
        assert!(
            secrets_from_lookup(|k| (k == "RECAC_SECRETS_DIR").then(|| dir.clone()))
                .contains(&"db-password-value".to_string())
        );
    }

    #[test]
    fn secrets_from_the_broker_are_settings_and_secrets() {
        use crate::secrets::SecretEntry;
        let entry = |secret: &str, key: &str, value: &str| SecretEntry {
            secret: secret.into(),
            key: key.into(),
            value: value.as_bytes().to_vec(),
        };
        let files = SecretFiles::from_entries(&[
            entry("a-creds", "OPENAI_API_KEY", "sk-from-broker-0123\n"),
            entry("a-creds", "RECAC_GIT_TOKEN", "broker-git-token"),
            entry("b-db", "DB_PASSWORD", "broker-db-password"),
        ]);
        let root = tempfile::tempdir().unwrap();
        // A folder that cannot be read: ignored, the broker's Secrets are the task's.
        let not_a_folder = root.path().join("file");
        std::fs::write(&not_a_folder, "x").unwrap();
        let dir = not_a_folder.join("secrets").display().to_string();
        let map: HashMap<String, String> = [
            ("RECAC_REPO_URL", "file:///r"),
            ("RECAC_PROMPT", "x"),
            ("RECAC_MODEL", "m"),
            ("RECAC_SECRETS_DIR", dir.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(Settings::from_lookup(|k| map.get(k).cloned()).is_err());
        let s = Settings::with_secret_files(|k| map.get(k).cloned(), files.clone()).unwrap();
        let EngineSettings::Builtin(llm) = &s.engine else {
            panic!()
        };
        assert_eq!(llm.api_key.as_deref(), Some("sk-from-broker-0123"));
        assert_eq!(s.git_token.as_deref(), Some("broker-git-token"));
        assert!(s.secrets().contains(&b"broker-db-password".to_vec()));
        assert!(s.child_env.withholds("DB_PASSWORD"));
        let texts = secret_texts(|_| None, &files);
        assert!(texts.contains(&"broker-db-password".to_string()));
    }

    /// An OpenSSH private key's text whose body names `cipher` (the rest is not a real key:
    /// only the form is checked).
    fn openssh_key(cipher: &str) -> String {
        use base64::Engine as _;
        let mut body = b"openssh-key-v1\0".to_vec();
        body.extend_from_slice(&(cipher.len() as u32).to_be_bytes());
        body.extend_from_slice(cipher.as_bytes());
        body.extend_from_slice(&[0; 24]);
        let encoded = base64::engine::general_purpose::STANDARD.encode(body);
        format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{encoded}\n-----END OPENSSH PRIVATE KEY-----\n"
        )
    }

    #[test]
    fn ssh_settings_are_checked_and_never_printed() {
        let root = tempfile::tempdir().unwrap();
        let known = root.path().join("known_hosts");
        std::fs::write(
            &known,
            "# comment\n[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
        )
        .unwrap();
        let secrets = root.path().join("secrets");
        std::fs::create_dir_all(secrets.join("git")).unwrap();
        let key = openssh_key("none");
        std::fs::write(secrets.join("git/RECAC_SSH_PRIVATE_KEY"), &key).unwrap();
        let known_s = known.display().to_string();
        let secrets_s = secrets.display().to_string();
        let with = |extra: &[(&str, &str)]| {
            let mut v: Vec<(&str, &str)> = vec![
                ("RECAC_REPO_URL", "git@github.com:acme/r.git"),
                ("RECAC_PROMPT", "x"),
                ("RECAC_AGENT_COMMAND", "true"),
                ("RECAC_SECRETS_DIR", secrets_s.as_str()),
                ("RECAC_SSH_KNOWN_HOSTS", known_s.as_str()),
                ("RECAC_GIT_CREDENTIAL_HOSTS", "github.com/acme"),
            ];
            v.extend_from_slice(extra);
            settings(&v)
        };
        let s = with(&[]).unwrap();
        assert_eq!(s.ssh.known_hosts.as_deref(), Some(known.as_path()));
        assert_eq!(s.ssh.private_key, Some(crate::git::SshKey::new(key.trim())));
        assert_eq!(render_scopes(&s.ssh.key_scopes), "github.com/acme");
        // The key is a secret: redacted, withheld from commands, never printed.
        assert!(s.secrets().contains(&key.trim().as_bytes().to_vec()));
        assert!(s.child_env.withholds("RECAC_SSH_PRIVATE_KEY"));
        assert!(!format!("{s:?}").contains("OPENSSH"));

        for (extra, var, says) in [
            (
                vec![("RECAC_SSH_KNOWN_HOSTS", "/nowhere/known_hosts")],
                "RECAC_SSH_KNOWN_HOSTS",
                "cannot read /nowhere/known_hosts",
            ),
            (
                vec![("RECAC_SSH_KNOWN_HOSTS", "/a b/known_hosts")],
                "RECAC_SSH_KNOWN_HOSTS",
                "without spaces",
            ),
            (
                vec![("RECAC_SSH_PRIVATE_KEY", "ssh-ed25519 AAAAC3Nza test@host")],
                "RECAC_SSH_PRIVATE_KEY",
                "public key",
            ),
            (
                vec![("RECAC_SSH_PRIVATE_KEY", "hunter2-not-a-key")],
                "RECAC_SSH_PRIVATE_KEY",
                "not a private key",
            ),
        ] {
            let err = with(&extra).unwrap_err().to_string();
            assert!(err.contains(var) && err.contains(says), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let encrypted = openssh_key("aes256-ctr");
        let err = with(&[("RECAC_SSH_PRIVATE_KEY", encrypted.as_str())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RECAC_SSH_PRIVATE_KEY") && err.contains("passphrase"),
            "{err}"
        );
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----";
        let err = with(&[("RECAC_SSH_PRIVATE_KEY", pem)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("passphrase"), "{err}");
        std::fs::write(&known, "# only a comment\n").unwrap();
        let err = with(&[]).unwrap_err().to_string();
        assert!(
            err.contains("RECAC_SSH_KNOWN_HOSTS") && err.contains("no host key line"),
            "{err}"
        );
        // The known hosts are the operator's: a Secret key of that name is not read as it.
        std::fs::write(secrets.join("git/RECAC_SSH_KNOWN_HOSTS"), "/etc/passwd").unwrap();
        let s = settings(&[
            ("RECAC_REPO_URL", "git@github.com:acme/r.git"),
            ("RECAC_PROMPT", "x"),
            ("RECAC_AGENT_COMMAND", "true"),
            ("RECAC_SECRETS_DIR", secrets_s.as_str()),
        ])
        .unwrap();
        assert_eq!(s.ssh.known_hosts, None);
        // Unset, the key's scopes are the git token's default.
        assert_eq!(render_scopes(&s.ssh.key_scopes), "github.com");
    }

    fn render_scopes(scopes: &[HostScope]) -> String {
        recac_api::repo_host::render_list(scopes)
    }

    #[test]
    fn every_variable_is_documented() {
        let names: Vec<&str> = ENV_DOCS.iter().map(|d| d.0).collect();
        for v in SECRET_VARS {
            assert!(names.contains(v));
        }
        assert!(names.contains(&vars::SECRETS_DIR) && names.contains(&vars::SECRET_ENV_ALLOW));
        assert!(names.contains(&vars::SECRETS_SOCKET));
        assert!(names.contains(&vars::TEST_COMMAND));
        assert!(names.contains(&vars::RESULT_PATH) && names.contains(&vars::MODE));
        assert!(names.contains(&vars::SSH_KNOWN_HOSTS) && names.contains(&vars::SSH_PRIVATE_KEY));
        for var in [
            vars::DEADLINE,
            vars::DEADLINE_MARGIN_SECONDS,
            vars::BUDGET_TOKENS,
            vars::BUDGET_INPUT_TOKENS,
            vars::BUDGET_OUTPUT_TOKENS,
            vars::BUDGET_COST,
            vars::BUDGET_CURRENCY,
            vars::PRICE_INPUT_PER_MILLION,
            vars::PRICE_OUTPUT_PER_MILLION,
        ] {
            assert!(names.contains(&var), "{var}");
        }
    }
}
