//! The `recac.io` API: the `AgentTask` custom resource and the contract between
//! a task's Job and the agent that runs in it.

pub mod agent_contract;
mod agent_task;
pub mod egress;
pub mod egress_policy;
pub mod git_ref;
pub mod money;
pub mod repo_host;
mod schedule;

pub use agent_task::*;
pub use schedule::*;

use kube::CustomResourceExt;

/// Errors while rendering the CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("cannot render the {name} CRD as YAML: {message}")]
    Render { name: String, message: String },
}

/// Every CustomResourceDefinition recac serves, as one multi-document YAML stream (the
/// files of [`crd_files`], in order).
pub fn crds_yaml() -> Result<String, CrdError> {
    Ok(crd_files()?
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<String>())
}

/// Each CustomResourceDefinition as the file `crds/<file>` holds it: `(file, YAML)`.
pub fn crd_files() -> Result<Vec<(&'static str, String)>, CrdError> {
    [
        ("agenttask.yaml", AgentTask::crd()),
        ("agenttaskschedule.yaml", AgentTaskSchedule::crd()),
    ]
    .into_iter()
    .map(|(file, crd)| {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_saphyr::to_string(&crd).map_err(|e| CrdError::Render {
            name,
            message: e.to_string(),
        })?;
        Ok((file, format!("---\n{yaml}")))
    })
    .collect()
}
