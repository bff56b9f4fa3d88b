//! The operator's configuration: one YAML file read into typed sections.
//!
//! Every key is documented in the README's configuration reference. Unknown
//! keys and wrong types are errors that name the full key path.

use std::path::Path;

use serde::Deserialize;

/// The whole configuration file. Each section belongs to the component that
/// uses it and carries its own defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperatorConfig {
    /// How the task controller runs (`controller:`).
    #[serde(default)]
    pub controller: recac_controller::ControllerConfig,
    /// Defaults for every agent Job (`agent:`).
    #[serde(default)]
    pub agent: recac_controller::AgentDefaults,
    /// The Jira connection (`jira:`); see docs/jira.md.
    #[serde(default)]
    pub jira: Option<recac_jira::JiraConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: at `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

impl OperatorConfig {
    /// Reads and validates the file; `None` gives the documented defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses YAML text; `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            key,
            message,
        };
        // Parse to a generic tree first so that a type or unknown-key error can name its full path.
        let tree: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| invalid("(document)".into(), e.to_string()))?
        };
        let config: Self = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            invalid(key, e.into_inner().to_string())
        })?;
        config
            .controller
            .validate()
            .and_then(|()| config.agent.validate())
            .map_err(|e| invalid(e.key, e.message))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert!(OperatorConfig::parse("", "test.yaml").is_ok());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = OperatorConfig::parse("bogus: 1\n", "test.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bogus"), "{text}");
        assert!(text.contains("test.yaml"), "{text}");
    }
}
