//! What the operator lets agent pods reach, as its configuration says: the parts that
//! `agent.egress` and `sources[].egress` share. The rules themselves are [`crate::egress`].

use serde::{Deserialize, Serialize};

use crate::egress::EgressRule;

/// Whether agent pods reach the network freely or only through the egress proxy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EgressMode {
    /// No proxy and no NetworkPolicy: agents reach whatever the cluster lets pods reach.
    #[default]
    Open,
    /// Agents reach the network only through the egress proxy, which allows the hosts of
    /// the task's allow-list by name; a NetworkPolicy per agent pod denies everything else.
    AllowList,
}

/// A source's egress (`sources[].egress`): each key set replaces `agent.egress`'s for the
/// source's tasks.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceEgress {
    /// `open` or `allowList`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EgressMode>,
    /// What every task of the source may reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<EgressRule>>,
    /// What a task's `spec.egress.allow` may add beyond `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit: Option<Vec<EgressRule>>,
}
