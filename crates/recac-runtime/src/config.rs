//! The process-wide `operator:` section of the configuration file, and the error every
//! section's validation returns.

use serde::Deserialize;

/// Settings of the whole process (not of one controller).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OperatorSettings {
    /// Namespaces to watch; empty watches every namespace.
    pub namespaces: Vec<String>,
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    pub admin_address: String,
    /// How long a component may take to stop once told (shutdown, or leadership lost).
    pub stop_timeout_seconds: u64,
    /// Leader election among replicas (`operator.leaderElection`).
    pub leader_election: crate::election::LeaderElectionSettings,
}

impl Default for OperatorSettings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            admin_address: "0.0.0.0:8080".into(),
            stop_timeout_seconds: 10,
            leader_election: Default::default(),
        }
    }
}

/// A configuration value that cannot work, named by its full key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{key}`: {message}")]
pub struct InvalidConfig {
    pub key: String,
    pub message: String,
}

/// Builds an [`InvalidConfig`].
pub fn invalid(key: &str, message: impl Into<String>) -> InvalidConfig {
    InvalidConfig {
        key: key.into(),
        message: message.into(),
    }
}

/// A DNS-1123 label: what namespace names must be.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A DNS-1123 subdomain: what Secret and ServiceAccount names must be.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

impl OperatorSettings {
    /// Checks every key; `section` is the section's name in the file (`operator`).
    pub fn validate(&self, section: &str) -> Result<(), InvalidConfig> {
        if self.admin_address.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                &format!("{section}.adminAddress"),
                format!("{:?} is not a host:port address", self.admin_address),
            ));
        }
        if self.stop_timeout_seconds == 0 || self.stop_timeout_seconds > 300 {
            return Err(invalid(
                &format!("{section}.stopTimeoutSeconds"),
                "must be between 1 and 300",
            ));
        }
        self.leader_election
            .validate(&format!("{section}.leaderElection"))?;
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !is_dns_label(ns) {
                return Err(invalid(
                    &format!("{section}.namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name"),
                ));
            }
            if self.namespaces[..i].contains(ns) {
                return Err(invalid(
                    &format!("{section}.namespaces[{i}]"),
                    format!("{ns:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}
