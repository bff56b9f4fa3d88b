//! The operator configuration `recac dev` runs with: `config/dev/config.yaml` (built in)
//! or the user's copy, plus what the command line chooses (a real Jira, a real model).
//! The result is written to the state folder and validated by the operator itself
//! (`recac orchestrate --check-config`) before anything starts.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::DevError;

/// The built-in configuration (`config/dev/config.yaml`).
pub const BUILT_IN: &str = include_str!("../../../config/dev/config.yaml");

/// The model the agents use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Model {
    /// The local scripted demo model at the configuration's `OPENAI_BASE_URL`.
    Demo,
    /// A real provider (`openai` or `anthropic`) and model name.
    Provider { provider: String, model: String },
}

/// What `recac dev` needs to know of the configuration.
#[derive(Clone, Debug)]
pub struct DevConfig {
    /// The configuration the operators read (YAML).
    pub text: String,
    /// `jira.url`.
    pub jira_url: String,
    /// Where the demo model listens (from `agent.env` `OPENAI_BASE_URL`), with [`Model::Demo`].
    pub model_address: Option<SocketAddr>,
    /// `operator.adminAddress` (the first replica's; the next ones use the following ports).
    pub admin_address: SocketAddr,
    /// The namespaces of the sources' tasks.
    pub task_namespaces: Vec<String>,
    /// The Lease's namespace.
    pub lease_namespace: String,
    /// The first Secret in `agent.secretRefs`: `recac dev` creates it with the git token and
    /// the model's key.
    pub secret_name: String,
    /// The first source's trigger label.
    pub trigger_label: Option<String>,
    /// Where the agents find the git server's CA (`agent.caBundle`): `recac dev` creates that
    /// ConfigMap or Secret in each task namespace. Added as [`DEFAULT_CA_CONFIG_MAP`] when the
    /// configuration names none.
    pub ca_bundle: CaBundle,
}

/// The ConfigMap of the git server's CA when `agent.caBundle` names none.
pub const DEFAULT_CA_CONFIG_MAP: &str = "recac-demo-ca";

/// `agent.caBundle`: a ConfigMap or a Secret, and the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaBundle {
    /// `true`: a Secret; `false`: a ConfigMap.
    pub secret: bool,
    pub name: String,
    pub key: String,
}

fn invalid(what: impl Into<String>) -> DevError {
    DevError::Config(what.into())
}

/// A loopback `host:port` from an `http://` or `https://` URL.
pub fn loopback_address(url: &str) -> Option<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let address: SocketAddr = authority.replace("localhost", "127.0.0.1").parse().ok()?;
    address.ip().is_loopback().then_some(address)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// Reads `text` and applies the choices of the command line.
pub fn prepare(text: &str, jira_url: Option<&str>, model: &Model) -> Result<DevConfig, DevError> {
    let mut root: Value = serde_saphyr::from_str(text)
        .map_err(|e| invalid(format!("the configuration is not valid YAML: {e}")))?;
    if !root.is_object() {
        return Err(invalid("the configuration is not a YAML mapping"));
    }
    if let Some(url) = jira_url {
        let jira = root
            .as_object_mut()
            .map(|o| o.entry("jira").or_insert_with(|| json!({})));
        if let Some(Value::Object(jira)) = jira {
            jira.insert("url".into(), json!(url));
            // Plain HTTP only to a Jira on this machine (a simulator run by hand).
            let local_http = url.starts_with("http://") && loopback_address(url).is_some();
            jira.insert("allowInsecureHttp".into(), json!(local_http));
        }
    }
    if let Model::Provider { provider, model } = model
        && let Some(Value::Object(agent)) = root.get_mut("agent")
    {
        agent.insert("provider".into(), json!(provider));
        agent.insert("model".into(), json!(model));
        if let Some(Value::Array(env)) = agent.get_mut("env") {
            env.retain(|e| {
                !matches!(
                    e.get("name").and_then(Value::as_str),
                    Some("OPENAI_BASE_URL" | "ANTHROPIC_BASE_URL")
                )
            });
        }
    }

    // The agents trust the demo git server's CA through agent.caBundle, as in a cluster.
    if let Some(Value::Object(agent)) = root.get_mut("agent")
        && !agent.contains_key("caBundle")
    {
        agent.insert(
            "caBundle".into(),
            json!({"configMap": DEFAULT_CA_CONFIG_MAP}),
        );
    }
    let jira_url = str_at(&root, "/jira/url")
        .ok_or_else(|| invalid("`jira.url` is required: the demo needs a Jira (the simulator's address, or --jira-url)"))?
        .to_string();
    let model_address = match model {
        Model::Demo => {
            let url = root
                .pointer("/agent/env")
                .and_then(Value::as_array)
                .and_then(|env| {
                    env.iter().find(|e| {
                        e.get("name").and_then(Value::as_str) == Some("OPENAI_BASE_URL")
                    })
                })
                .and_then(|e| e.get("value").and_then(Value::as_str))
                .ok_or_else(|| {
                    invalid("`agent.env` names no OPENAI_BASE_URL: the demo model needs a loopback address (or set OPENAI_API_KEY / ANTHROPIC_API_KEY for a real model)")
                })?;
            Some(loopback_address(url).ok_or_else(|| {
                invalid(format!(
                    "`agent.env` OPENAI_BASE_URL {url:?} is not a loopback http:// address for the demo model"
                ))
            })?)
        }
        Model::Provider { .. } => None,
    };
    let admin = str_at(&root, "/operator/adminAddress").unwrap_or("127.0.0.1:18081");
    let admin_address: SocketAddr = admin.parse().map_err(|_| {
        invalid(format!(
            "`operator.adminAddress` {admin:?} is not an address"
        ))
    })?;
    let sources = root
        .get("sources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if sources.is_empty() {
        return Err(invalid(
            "`sources` is empty: the demo needs a source that turns tickets into tasks",
        ));
    }
    let task_namespaces = sources
        .iter()
        .filter_map(|s| s.get("namespace").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    let trigger_label = sources[0]
        .get("label")
        .and_then(Value::as_str)
        .map(str::to_string);
    let lease_namespace = str_at(&root, "/operator/leaderElection/leaseNamespace")
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_string();
    let secret_name = root
        .pointer("/agent/secretRefs/0")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid("`agent.secretRefs` is empty: the agent needs a Secret for the git token and the model's key")
        })?
        .to_string();
    let ca_key = str_at(&root, "/agent/caBundle/key").unwrap_or(recac_api::DEFAULT_CA_KEY);
    let ca_bundle = match (
        str_at(&root, "/agent/caBundle/configMap"),
        str_at(&root, "/agent/caBundle/secret"),
    ) {
        (Some(name), None) | (None, Some(name)) => CaBundle {
            secret: str_at(&root, "/agent/caBundle/secret").is_some(),
            name: name.to_string(),
            key: ca_key.to_string(),
        },
        _ => {
            return Err(invalid(
                "`agent.caBundle` must name one configMap or secret: the agents trust the demo git server's CA through it",
            ));
        }
    };
    let text = serde_saphyr::to_string(&root)
        .map_err(|e| invalid(format!("cannot write the configuration: {e}")))?;
    Ok(DevConfig {
        text,
        jira_url,
        model_address,
        admin_address,
        task_namespaces,
        lease_namespace,
        secret_name,
        trigger_label,
        ca_bundle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_configuration_names_every_address() {
        let config = prepare(BUILT_IN, None, &Model::Demo).expect("valid");
        assert_eq!(config.jira_url, "http://127.0.0.1:18080");
        assert_eq!(
            config.model_address,
            Some("127.0.0.1:18084".parse().expect("address"))
        );
        assert_eq!(config.admin_address.port(), 18081);
        assert_eq!(config.task_namespaces, ["recac-demo"]);
        assert_eq!(config.lease_namespace, "recac-system");
        assert_eq!(config.secret_name, "recac-demo-credentials");
        assert_eq!(config.trigger_label.as_deref(), Some("recac"));
        assert_eq!(
            config.ca_bundle,
            CaBundle {
                secret: false,
                name: "recac-demo-ca".into(),
                key: "ca.crt".into()
            }
        );
    }

    #[test]
    fn the_git_servers_ca_reaches_the_agents_through_agent_ca_bundle() {
        // A copy without caBundle gets the default ConfigMap.
        let without = BUILT_IN.replace("  caBundle: {configMap: recac-demo-ca}", "");
        let parsed: Value = serde_saphyr::from_str(&without).expect("yaml");
        assert_eq!(parsed.pointer("/agent/caBundle"), None);
        let config = prepare(&without, None, &Model::Demo).expect("valid");
        let root: Value = serde_saphyr::from_str(&config.text).expect("yaml");
        assert_eq!(
            root.pointer("/agent/caBundle"),
            Some(&json!({"configMap": "recac-demo-ca"}))
        );
        // A Secret of its own, with its own key.
        let own = BUILT_IN.replace(
            "caBundle: {configMap: recac-demo-ca}",
            "caBundle: {secret: my-ca, key: ca.pem}",
        );
        let config = prepare(&own, None, &Model::Demo).expect("valid");
        assert_eq!(
            config.ca_bundle,
            CaBundle {
                secret: true,
                name: "my-ca".into(),
                key: "ca.pem".into()
            }
        );
        let both = BUILT_IN.replace(
            "caBundle: {configMap: recac-demo-ca}",
            "caBundle: {secret: my-ca, configMap: x}",
        );
        let err = prepare(&both, None, &Model::Demo).expect_err("both");
        assert!(err.to_string().contains("agent.caBundle"), "{err}");
    }

    #[test]
    fn a_real_jira_and_model_replace_the_simulated_ones() {
        let model = Model::Provider {
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
        };
        let config =
            prepare(BUILT_IN, Some("https://example.atlassian.net"), &model).expect("valid");
        assert_eq!(config.jira_url, "https://example.atlassian.net");
        assert_eq!(config.model_address, None);
        let root: Value = serde_saphyr::from_str(&config.text).expect("yaml");
        assert_eq!(root.pointer("/agent/provider"), Some(&json!("anthropic")));
        assert_eq!(root.pointer("/agent/env"), Some(&json!([])));
        assert_eq!(root.pointer("/jira/allowInsecureHttp"), Some(&json!(false)));
    }

    #[test]
    fn missing_pieces_are_named() {
        let err = prepare("operator: {}\n", None, &Model::Demo).expect_err("no jira");
        assert!(err.to_string().contains("jira.url"), "{err}");
        let no_sources = BUILT_IN.replace("sources:", "unusedSources:");
        let err = prepare(&no_sources, None, &Model::Demo).expect_err("no sources");
        assert!(err.to_string().contains("sources"), "{err}");
        assert_eq!(
            loopback_address("http://localhost:9/v1"),
            Some("127.0.0.1:9".parse().expect("address"))
        );
        assert_eq!(loopback_address("https://api.openai.com/v1"), None);
    }
}
