//! The `recac.io` API: the `AgentTask` custom resource and the contract between
//! a task's Job and the agent that runs in it.

pub mod agent_contract;
mod agent_task;
pub mod git_ref;

pub use agent_task::*;

use kube::CustomResourceExt;

/// Errors while rendering the CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("cannot render the {name} CRD as YAML: {message}")]
    Render { name: String, message: String },
}

/// Every CustomResourceDefinition recac serves, as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, CrdError> {
    let crd = AgentTask::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let yaml = serde_saphyr::to_string(&crd).map_err(|e| CrdError::Render {
        name,
        message: e.to_string(),
    })?;
    Ok(format!("---\n{yaml}"))
}
