//! The source's spend record in the cluster: one ConfigMap per source
//! (`recac-spend-<source>` in the source's namespace, key `ledger.json`), changed only by a
//! compare-and-swap on its resourceVersion, so that two writers (a leader and one that just
//! lost its Lease) never count a spend twice. What it holds and why is [`crate::budget`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::budget::Ledger;

/// The ConfigMap key holding the ledger.
pub const KEY: &str = "ledger.json";

/// How many times a write that lost a race is tried again.
const ATTEMPTS: usize = 5;

/// The ConfigMap of `source`.
pub fn name(source: &str) -> String {
    format!("recac-spend-{source}")
}

/// Errors reading or writing the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ConfigMap {namespace}/{name}: {error}")]
    Kube {
        namespace: String,
        name: String,
        error: kube::Error,
    },
    #[error("ConfigMap {namespace}/{name} key {KEY} is not a spend ledger: {error}")]
    Malformed {
        namespace: String,
        name: String,
        error: serde_json::Error,
    },
    #[error("ConfigMap {namespace}/{name}: still changed by another writer after {ATTEMPTS} tries")]
    Contended { namespace: String, name: String },
}

/// Reads the ledger, lets `change` edit it (returning whether it changed), and writes it
/// back when it did; a write that lost a race reads and changes it again. Returns the
/// ledger as written (or read).
pub async fn update(
    client: &Client,
    namespace: &str,
    source: &str,
    mut change: impl FnMut(&mut Ledger) -> bool,
) -> Result<Ledger, LedgerError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = name(source);
    let kube_err = |error| LedgerError::Kube {
        namespace: namespace.to_string(),
        name: name.clone(),
        error,
    };
    for _ in 0..ATTEMPTS {
        let existing = api.get_opt(&name).await.map_err(kube_err)?;
        let mut ledger = match existing
            .as_ref()
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(KEY))
        {
            Some(text) => serde_json::from_str(text).map_err(|error| LedgerError::Malformed {
                namespace: namespace.to_string(),
                name: name.clone(),
                error,
            })?,
            None => Ledger::default(),
        };
        if !change(&mut ledger) {
            return Ok(ledger);
        }
        let text = serde_json::to_string(&ledger).map_err(|error| LedgerError::Malformed {
            namespace: namespace.to_string(),
            name: name.clone(),
            error,
        })?;
        let written = match existing {
            Some(mut map) => {
                map.data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(KEY.into(), text);
                api.replace(&name, &PostParams::default(), &map).await
            }
            None => {
                let map = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.to_string()),
                        labels: Some(BTreeMap::from([
                            ("app.kubernetes.io/managed-by".into(), "recac".into()),
                            ("recac.io/source".into(), source.to_string()),
                        ])),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(KEY.to_string(), text)])),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &map).await
            }
        };
        match written {
            Ok(_) => return Ok(ledger),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => return Err(kube_err(error)),
        }
    }
    Err(LedgerError::Contended {
        namespace: namespace.to_string(),
        name,
    })
}
