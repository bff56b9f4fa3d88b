//! The recac agent: what `recac start` runs inside a task's Job (or on a developer's machine).
//!
//! The flow ([`run::run`]): clone the repository into a workspace, continue or create the
//! branch, let an engine do the work (the built-in LLM tool-use loop or an external agent CLI),
//! run the tests, commit, push, optionally open a pull request, and report an
//! [`AgentResult`](recac_api::agent_contract::AgentResult). A planning run
//! (`RECAC_MODE=plan`, [`plan`]) checks the branch out the same way, lets the engine write a
//! plan instead of the work and reports it; it commits and pushes nothing.
//!
//! Pure decisions live apart from I/O: [`branch`], [`budget`], [`cut`], [`detect`], [`plan`],
//! [`report`], [`redact`] and [`run::decide_publish`].
//!
//! Failures are classified by whether another attempt may get past them: retryable
//! (`failed`: the network, a rate limit, a lost push race; `testsFailed`: the next attempt
//! continues the branch) or not (`gaveUp`). Among the latter, what the agent's environment
//! lacks: a test program the image does not have ([`toolchain`]) or a folder it cannot write
//! ([`environment`]).

pub mod branch;
pub mod broker;
pub mod budget;
pub mod cut;
pub mod detect;
pub mod egress;
pub mod engine;
pub mod environment;
pub mod git;
pub mod github;
pub mod plan;
pub mod process;
pub mod redact;
pub mod report;
pub mod run;
pub mod secrets;
pub mod settings;
pub mod toolchain;

pub use redact::Redactor;
pub use run::{RunOutput, run, run_until};
pub use settings::Settings;
