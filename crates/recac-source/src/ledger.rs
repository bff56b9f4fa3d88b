//! The source's spend record in the cluster: one ConfigMap per source
//! (`recac-spend-<source>` in the source's namespace, key `ledger.json`), changed only by a
//! compare-and-swap ([`recac_runtime::spend_ledger`]). What it holds and why is
//! [`crate::budget`].

use kube::Client;
use recac_runtime::spend_ledger::{self, LedgerMap};

use crate::budget::Ledger;

pub use recac_runtime::spend_ledger::{KEY, LedgerError};

/// The ConfigMap of `source`.
pub fn name(source: &str) -> String {
    format!("recac-spend-{source}")
}

/// Reads the source's ledger, lets `change` edit it (returning whether it changed), and
/// writes it back when it did (see [`spend_ledger::update`]).
pub async fn update(
    client: &Client,
    namespace: &str,
    source: &str,
    change: impl FnMut(&mut Ledger) -> bool,
) -> Result<Ledger, LedgerError> {
    let name = name(source);
    let labels = [
        ("app.kubernetes.io/managed-by", "recac"),
        ("recac.io/source", source),
    ];
    let at = LedgerMap {
        namespace,
        name: &name,
        labels: &labels,
    };
    spend_ledger::update(client, at, change).await
}
