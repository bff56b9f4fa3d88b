//! Status writes by server-side apply, one field manager per controller.
//!
//! Each controller applies only the status fields it owns, under its own field manager, so
//! two controllers writing the same object's status never remove each other's fields. A
//! list-map field (`conditions`, keyed by `type`) is shared the same way: each manager owns
//! the entries it applies.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Applies `status` to the status subresource of `name` as `field_manager`.
///
/// With `resource_version`, the write is a precondition: it fails with 409 if the object
/// changed since it was read, so a decision made on a stale copy cannot overwrite newer
/// status (decide again on the fresh copy).
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    resource_version: Option<&str>,
    field_manager: &str,
    status: &impl Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut metadata = serde_json::Map::new();
    if let Some(version) = resource_version {
        metadata.insert("resourceVersion".into(), version.into());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
