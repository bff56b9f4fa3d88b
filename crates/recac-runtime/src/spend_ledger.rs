//! A spend [`Ledger`] in the cluster: one ConfigMap (key `ledger.json`), changed only by a
//! compare-and-swap on its resourceVersion, so that two writers (a leader and one that just
//! lost its Lease) never count a spend twice. What it holds and why is [`crate::spend`];
//! which ConfigMap is its owner's choice (a source's `recac-spend-<source>`, a namespace's
//! `recac-spend-namespace`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::spend::Ledger;

/// The ConfigMap key holding the ledger.
pub const KEY: &str = "ledger.json";

/// How many times a write that lost a race is tried again.
const ATTEMPTS: usize = 5;

/// Errors reading or writing a ledger.
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

/// The ledger `map` holds: `Ok(None)` when it holds none yet (no `ledger.json` key).
pub fn parse(map: &ConfigMap) -> Result<Option<Ledger>, serde_json::Error> {
    map.data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .map(|text| serde_json::from_str(text))
        .transpose()
}

/// Where a ledger lives and what labels its ConfigMap is created with.
#[derive(Clone, Copy, Debug)]
pub struct LedgerMap<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
}

/// Reads the ledger, lets `change` edit it (returning whether it changed), and writes it
/// back when it did; a write that lost a race reads and changes it again. Returns the
/// ledger as written (or read).
pub async fn update(
    client: &Client,
    at: LedgerMap<'_>,
    mut change: impl FnMut(&mut Ledger) -> bool,
) -> Result<Ledger, LedgerError> {
    let LedgerMap {
        namespace,
        name,
        labels,
    } = at;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let kube_err = |error| LedgerError::Kube {
        namespace: namespace.to_string(),
        name: name.to_string(),
        error,
    };
    let malformed = |error| LedgerError::Malformed {
        namespace: namespace.to_string(),
        name: name.to_string(),
        error,
    };
    for _ in 0..ATTEMPTS {
        let existing = api.get_opt(name).await.map_err(kube_err)?;
        let mut ledger = match &existing {
            Some(map) => parse(map).map_err(malformed)?.unwrap_or_default(),
            None => Ledger::default(),
        };
        if !change(&mut ledger) {
            return Ok(ledger);
        }
        let text = serde_json::to_string(&ledger).map_err(malformed)?;
        let written = match existing {
            Some(mut map) => {
                map.data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(KEY.into(), text);
                api.replace(name, &PostParams::default(), &map).await
            }
            None => {
                let map = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(namespace.to_string()),
                        labels: Some(
                            labels
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                        ),
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
            // 409: changed (or created) by another writer since it was read.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => return Err(kube_err(error)),
        }
    }
    Err(LedgerError::Contended {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}
