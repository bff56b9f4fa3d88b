//! The `jira:` section of the operator's configuration file.
//!
//! Credentials are never written in the file itself: the file names an
//! environment variable or a file (for example a mounted Kubernetes Secret)
//! that holds them. See `docs/jira.md` for every key and its default.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Which Jira REST API the site speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// Jira Cloud, REST v3: `/rest/api/3/search/jql` with `nextPageToken`,
    /// ADF comment bodies, users identified by `accountId`.
    #[default]
    Cloud,
    /// Jira Data Center / Server, REST v2: `/rest/api/2/search` with `startAt`,
    /// wiki-markup comment bodies, users identified by `name`.
    #[serde(alias = "server", alias = "dc")]
    Datacenter,
}

impl Flavor {
    /// The REST API version segment: `3` for Cloud, `2` for Data Center.
    pub fn api_version(self) -> u8 {
        match self {
            Flavor::Cloud => 3,
            Flavor::Datacenter => 2,
        }
    }

    pub fn parse(text: &str) -> Option<Flavor> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cloud" => Some(Flavor::Cloud),
            "datacenter" | "data-center" | "dc" | "server" => Some(Flavor::Datacenter),
            _ => None,
        }
    }
}

/// How the bot authenticates. Values are references (env var names, file
/// paths), never the secrets themselves.
///
/// ```yaml
/// auth: {type: basic, emailEnv: JIRA_EMAIL, tokenEnv: JIRA_API_TOKEN}
/// auth: {type: basic, email: bot@example.com, tokenFile: /var/run/secrets/jira/token}
/// auth: {type: bearer, tokenFile: /var/run/secrets/jira/pat}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum AuthConfig {
    /// `Authorization: Basic base64(user:token)`: Cloud e-mail + API token, or
    /// Data Center user name + password.
    Basic {
        /// The user (e-mail on Cloud, user name on Data Center), given inline. Not a secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        /// Environment variable holding the user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email_env: Option<String>,
        /// File holding the user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email_file: Option<PathBuf>,
        /// Environment variable holding the API token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_env: Option<String>,
        /// File holding the API token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<PathBuf>,
    },
    /// `Authorization: Bearer <token>`: a Data Center personal access token
    /// (or an OAuth access token).
    Bearer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_env: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<PathBuf>,
    },
}

impl Default for AuthConfig {
    /// `{type: basic, emailEnv: JIRA_EMAIL, tokenEnv: JIRA_API_TOKEN}`.
    fn default() -> Self {
        AuthConfig::Basic {
            email: None,
            email_env: Some("JIRA_EMAIL".into()),
            email_file: None,
            token_env: Some("JIRA_API_TOKEN".into()),
            token_file: None,
        }
    }
}

/// Resolved credentials. `Debug` never shows the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Basic { user: String, token: Secret },
    Bearer { token: Secret },
}

/// The `jira:` section. Every field has a default so that later sections
/// (sources, feedback) can extend it without breaking existing files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JiraConfig {
    /// Base URL of the site, e.g. `https://example.atlassian.net`. Required.
    #[serde(default)]
    pub url: String,
    /// `cloud` (default) or `datacenter`.
    #[serde(default)]
    pub flavor: Flavor,
    /// Credentials by reference. Default: basic with `JIRA_EMAIL` / `JIRA_API_TOKEN`.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Allow a plain `http://` URL to a non-loopback host (credentials travel
    /// in clear). Default `false`.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Timeout of one HTTP request, in seconds. Default 30.
    #[serde(default = "default_timeout")]
    pub request_timeout_seconds: u64,
    /// Retries after the first try for transient failures (429, 503, 502,
    /// 504, connection errors). Default 4, so at most 5 tries.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Longest `Retry-After` the client accepts to wait, in seconds; a longer
    /// one fails the call at once. Default 300.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after_seconds: u64,
    /// Issues requested per search page. Default 100 (Jira may return fewer).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Project key that `recac jira check` verifies permissions on. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

fn default_timeout() -> u64 {
    30
}
fn default_max_retries() -> u32 {
    4
}
fn default_max_retry_after() -> u64 {
    300
}
fn default_page_size() -> u32 {
    100
}

impl Default for JiraConfig {
    fn default() -> Self {
        JiraConfig {
            url: String::new(),
            flavor: Flavor::default(),
            auth: AuthConfig::default(),
            allow_insecure_http: false,
            request_timeout_seconds: default_timeout(),
            max_retries: default_max_retries(),
            max_retry_after_seconds: default_max_retry_after(),
            page_size: default_page_size(),
            project: None,
        }
    }
}

/// A configuration problem; `key` is the path of the bad key below `jira`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("jira.{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

impl JiraConfig {
    /// Builds the section from `JIRA_*` environment variables:
    /// `JIRA_URL`, `JIRA_FLAVOR`, `JIRA_EMAIL` (alias `JIRA_USERNAME`) with
    /// `JIRA_API_TOKEN`, or `JIRA_PAT` (bearer), `JIRA_PROJECT`,
    /// `JIRA_ALLOW_INSECURE_HTTP`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_with(|k| std::env::var(k).ok())
    }

    /// [`JiraConfig::from_env`] with an injectable lookup (for tests).
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut cfg = JiraConfig {
            url: get("JIRA_URL").unwrap_or_default(),
            ..JiraConfig::default()
        };
        if let Some(f) = get("JIRA_FLAVOR") {
            cfg.flavor = Flavor::parse(&f).ok_or_else(|| {
                bad(
                    "flavor",
                    format!("JIRA_FLAVOR={f:?}: expected `cloud` or `datacenter`"),
                )
            })?;
        }
        if get("JIRA_PAT").is_some() {
            cfg.auth = AuthConfig::Bearer {
                token_env: Some("JIRA_PAT".into()),
                token_file: None,
            };
        } else {
            let email_env = if get("JIRA_EMAIL").is_none() && get("JIRA_USERNAME").is_some() {
                "JIRA_USERNAME"
            } else {
                "JIRA_EMAIL"
            };
            cfg.auth = AuthConfig::Basic {
                email: None,
                email_env: Some(email_env.into()),
                email_file: None,
                token_env: Some("JIRA_API_TOKEN".into()),
                token_file: None,
            };
        }
        cfg.project = get("JIRA_PROJECT");
        if let Some(v) = get("JIRA_ALLOW_INSECURE_HTTP") {
            cfg.allow_insecure_http =
                matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes");
        }
        Ok(cfg)
    }

    /// Checks every key; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.parsed_url()?;
        if self.request_timeout_seconds == 0 || self.request_timeout_seconds > 600 {
            return Err(bad("requestTimeoutSeconds", "must be between 1 and 600"));
        }
        if self.max_retries > 20 {
            return Err(bad("maxRetries", "must be at most 20"));
        }
        if self.page_size == 0 || self.page_size > 5000 {
            return Err(bad("pageSize", "must be between 1 and 5000"));
        }
        if let Some(p) = &self.project {
            let ok = p.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && p.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(bad(
                    "project",
                    format!("{p:?} is not a project key (like `OPS`)"),
                ));
            }
        }
        match &self.auth {
            AuthConfig::Basic {
                email,
                email_env,
                email_file,
                token_env,
                token_file,
            } => {
                let n =
                    email.is_some() as u8 + email_env.is_some() as u8 + email_file.is_some() as u8;
                if n != 1 {
                    return Err(bad(
                        "auth.emailEnv",
                        "basic auth needs exactly one of email, emailEnv, emailFile",
                    ));
                }
                if token_env.is_some() == token_file.is_some() {
                    return Err(bad(
                        "auth.tokenEnv",
                        "basic auth needs exactly one of tokenEnv, tokenFile",
                    ));
                }
            }
            AuthConfig::Bearer {
                token_env,
                token_file,
            } => {
                if token_env.is_some() == token_file.is_some() {
                    return Err(bad(
                        "auth.tokenEnv",
                        "bearer auth needs exactly one of tokenEnv, tokenFile",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The URL, checked: `https`, or `http` only to a loopback host or with
    /// `allowInsecureHttp`. A trailing slash is removed.
    pub fn parsed_url(&self) -> Result<url::Url, ConfigError> {
        if self.url.trim().is_empty() {
            return Err(bad("url", "is required (or set JIRA_URL)"));
        }
        let url = url::Url::parse(self.url.trim())
            .map_err(|e| bad("url", format!("{:?} is not a URL: {e}", self.url)))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("url", "must not contain credentials; use auth"));
        }
        match url.scheme() {
            "https" => {}
            "http" => {
                let loopback = match url.host() {
                    Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                    Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                    Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                    None => false,
                };
                if !loopback && !self.allow_insecure_http {
                    return Err(bad(
                        "url",
                        "plain http:// would send credentials in clear; use https:// or set allowInsecureHttp: true",
                    ));
                }
            }
            other => return Err(bad("url", format!("unsupported scheme {other:?}"))),
        }
        if url.host().is_none() {
            return Err(bad("url", "has no host"));
        }
        Ok(url)
    }

    /// Reads the credentials the config points at.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        self.credentials_with(|k| std::env::var(k).ok())
    }

    /// [`JiraConfig::credentials`] with an injectable env lookup.
    pub fn credentials_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, ConfigError> {
        let from_env = |key: &str, var: &str| -> Result<String, ConfigError> {
            match env(var) {
                Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                _ => Err(bad(
                    key,
                    format!("environment variable {var} is not set or empty"),
                )),
            }
        };
        let from_file = |key: &str, path: &PathBuf| -> Result<String, ConfigError> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad(key, format!("cannot read {}: {e}", path.display())))?;
            let text = text.trim().to_string();
            if text.is_empty() {
                return Err(bad(key, format!("{} is empty", path.display())));
            }
            Ok(text)
        };
        match &self.auth {
            AuthConfig::Basic {
                email,
                email_env,
                email_file,
                token_env,
                token_file,
            } => {
                let user = match (email, email_env, email_file) {
                    (Some(e), _, _) => e.trim().to_string(),
                    (None, Some(var), _) => from_env("auth.emailEnv", var)?,
                    (None, None, Some(path)) => from_file("auth.emailFile", path)?,
                    _ => return Err(bad("auth.emailEnv", "no user configured")),
                };
                let token = match (token_env, token_file) {
                    (Some(var), _) => from_env("auth.tokenEnv", var)?,
                    (None, Some(path)) => from_file("auth.tokenFile", path)?,
                    _ => return Err(bad("auth.tokenEnv", "no token configured")),
                };
                Ok(Credentials::Basic {
                    user,
                    token: Secret::new(token),
                })
            }
            AuthConfig::Bearer {
                token_env,
                token_file,
            } => {
                let token = match (token_env, token_file) {
                    (Some(var), _) => from_env("auth.tokenEnv", var)?,
                    (None, Some(path)) => from_file("auth.tokenFile", path)?,
                    _ => return Err(bad("auth.tokenEnv", "no token configured")),
                };
                Ok(Credentials::Bearer {
                    token: Secret::new(token),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_from_empty_yaml_object() {
        let cfg: JiraConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, JiraConfig::default());
        assert_eq!(cfg.flavor, Flavor::Cloud);
        assert_eq!(cfg.request_timeout_seconds, 30);
        assert_eq!(cfg.max_retries, 4);
    }

    #[test]
    fn parses_bearer_file_auth() {
        let cfg: JiraConfig = serde_json::from_value(serde_json::json!({
            "url": "https://jira.example.com", "flavor": "datacenter",
            "auth": {"type": "bearer", "tokenFile": "/secrets/pat"}
        }))
        .unwrap();
        assert_eq!(cfg.flavor, Flavor::Datacenter);
        assert_eq!(
            cfg.auth,
            AuthConfig::Bearer {
                token_env: None,
                token_file: Some("/secrets/pat".into())
            }
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_rejected() {
        let e = serde_json::from_value::<JiraConfig>(serde_json::json!({"urll": "x"})).unwrap_err();
        assert!(e.to_string().contains("urll"), "{e}");
        let e = serde_json::from_value::<JiraConfig>(
            serde_json::json!({"auth": {"type": "bearer", "token": "x"}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
    }

    #[test]
    fn http_refused_unless_loopback_or_allowed() {
        let mut cfg = JiraConfig {
            url: "http://jira.example.com".into(),
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.key, "url");
        cfg.allow_insecure_http = true;
        cfg.validate().unwrap();
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            let cfg = JiraConfig {
                url: ok.into(),
                ..Default::default()
            };
            cfg.validate().unwrap();
        }
        let cfg = JiraConfig {
            url: "https://u:p@x.example".into(),
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "url");
    }

    #[test]
    fn validate_names_the_key() {
        let cfg = JiraConfig {
            url: "https://x.example".into(),
            request_timeout_seconds: 0,
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "requestTimeoutSeconds");
        let cfg = JiraConfig {
            url: "https://x.example".into(),
            project: Some("bad key".into()),
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "project");
        let cfg = JiraConfig {
            url: "https://x.example".into(),
            auth: AuthConfig::Bearer {
                token_env: None,
                token_file: None,
            },
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "auth.tokenEnv");
        assert!(
            JiraConfig::default()
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("jira.url")
        );
    }

    #[test]
    fn from_env_basic_and_bearer() {
        let cfg = JiraConfig::from_env_with(env(&[
            ("JIRA_URL", "https://x.atlassian.net"),
            ("JIRA_USERNAME", "bot"),
            ("JIRA_API_TOKEN", "tok"),
        ]))
        .unwrap();
        assert_eq!(cfg.flavor, Flavor::Cloud);
        let creds = cfg
            .credentials_with(env(&[("JIRA_USERNAME", "bot"), ("JIRA_API_TOKEN", "tok")]))
            .unwrap();
        assert_eq!(
            creds,
            Credentials::Basic {
                user: "bot".into(),
                token: Secret::new("tok")
            }
        );
        let cfg = JiraConfig::from_env_with(env(&[
            ("JIRA_URL", "https://jira.corp"),
            ("JIRA_FLAVOR", "datacenter"),
            ("JIRA_PAT", "pat"),
        ]))
        .unwrap();
        assert_eq!(cfg.flavor, Flavor::Datacenter);
        assert!(matches!(cfg.auth, AuthConfig::Bearer { .. }));
        assert!(JiraConfig::from_env_with(env(&[("JIRA_FLAVOR", "jira")])).is_err());
    }

    #[test]
    fn credentials_from_file_and_missing_env() {
        let dir = std::env::temp_dir().join(format!("recac-jira-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let cfg = JiraConfig {
            url: "https://x.example".into(),
            auth: AuthConfig::Bearer {
                token_env: None,
                token_file: Some(path.clone()),
            },
            ..Default::default()
        };
        assert_eq!(
            cfg.credentials_with(|_| None).unwrap(),
            Credentials::Bearer {
                token: Secret::new("s3cret")
            }
        );
        let cfg = JiraConfig::default();
        let e = cfg.credentials_with(|_| None).unwrap_err();
        assert_eq!(e.key, "auth.emailEnv");
        std::fs::remove_dir_all(&dir).ok();
    }
}
