//! Which repository a ticket's task works in: resolution rules from the source's
//! config, first match wins, and the checks every URL passes.
//!
//! Ticket text only ever *names* a repository (a `Repo:` line, a custom field); it never
//! supplies credentials or a local path: the URL must pass the same rule as
//! `spec.repository.url`, `file://` is refused from ticket text, and only the hosts or
//! organisations of `repository.allowed` are accepted; without that list, a URL from ticket
//! text must be on a host the agent's git token is scoped to (`agent.gitCredentialHosts`),
//! so that ticket text can never point the agent, and its credential, at a host of its own.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use recac_api::repo_host::{HostScope, RepoLocation};

use crate::config::RepositoryRules;

/// The rule `spec.repository.url` enforces in the CRD schema.
const URL_PATTERN: &str =
    r"^(https://[^\s@/]+/\S+|ssh://\S+|file:///\S*|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+)$";

fn url_rule() -> &'static Regex {
    static RULE: OnceLock<Regex> = OnceLock::new();
    RULE.get_or_init(|| Regex::new(URL_PATTERN).unwrap_or_else(|e| panic!("URL rule: {e}")))
}

fn repo_line() -> &'static Regex {
    static RULE: OnceLock<Regex> = OnceLock::new();
    RULE.get_or_init(|| {
        Regex::new(r"(?mi)^[ \t*_>-]*repo(?:sitory)?[ \t*_]*:[ \t*_]*<?([^\s<>|\]\[]+)")
            .unwrap_or_else(|e| panic!("repo line rule: {e}"))
    })
}

/// Checks a URL: the CRD's rule, no control characters or `..` segments, no `file://`
/// unless it comes from the config (`trusted`), and, when `allowed` is given, its hosts
/// or organisations (`None`: any host).
pub fn check_url(url: &str, allowed: Option<&[String]>, trusted: bool) -> Result<(), String> {
    if url.chars().any(char::is_control) {
        return Err("the URL contains control characters".into());
    }
    if url.len() > 2048 {
        return Err("the URL is longer than 2048 characters".into());
    }
    if !url_rule().is_match(url) {
        return Err(format!(
            "{url:?} is not a clone URL: use https://host/path (no credentials), ssh://, or git@host:path"
        ));
    }
    if url.split(['/', ':']).any(|segment| segment == "..") {
        return Err(format!("{url:?} contains a `..` segment"));
    }
    if url.starts_with("file://") && !trusted {
        return Err("file:// URLs are only accepted from the source's configuration".into());
    }
    let Some(allowed) = allowed else {
        return Ok(());
    };
    if allowed.is_empty() {
        return Err("no repository host is accepted from ticket text".into());
    }
    let scopes: Vec<HostScope> = allowed
        .iter()
        .filter_map(|e| HostScope::parse(e).ok())
        .collect();
    match RepoLocation::of(url) {
        Some(location) if location.in_scope(&scopes) => Ok(()),
        _ => Err(format!(
            "{url:?} is not on the allowed list ({})",
            allowed.join(", ")
        )),
    }
}

/// Where a resolved URL came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Description,
    CustomField,
    Component,
    Project,
    Default,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Description => "description",
            Origin::CustomField => "custom field",
            Origin::Component => "component",
            Origin::Project => "project",
            Origin::Default => "default",
        }
    }

    fn trusted(self) -> bool {
        matches!(self, Origin::Component | Origin::Project | Origin::Default)
    }
}

/// The outcome of resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Found {
        url: String,
        origin: Origin,
    },
    /// The first matching rule gave a URL that fails the checks.
    Rejected {
        url: String,
        origin: Origin,
        why: String,
    },
    /// No rule matched.
    Missing,
}

/// What resolution reads of a ticket.
pub struct TicketRepoFacts<'a> {
    pub description: &'a str,
    pub project: &'a str,
    pub components: Vec<String>,
    pub raw_fields: &'a Value,
}

/// The text of a custom field value: a string, or an object's `value`/`url`.
fn field_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Object(o) => o
            .get("value")
            .or_else(|| o.get("url"))
            .and_then(Value::as_str)
            .map(|s| s.trim().to_string()),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

/// Applies the rules in order; the first rule that yields a URL decides.
pub fn resolve(rules: &RepositoryRules, ticket: &TicketRepoFacts<'_>) -> Resolution {
    let candidate = first_candidate(rules, ticket);
    match candidate {
        None => Resolution::Missing,
        Some((url, origin)) => {
            match check_url(&url, rules.hosts_for(origin.trusted()), origin.trusted()) {
                Ok(()) => Resolution::Found { url, origin },
                Err(why) => Resolution::Rejected { url, origin, why },
            }
        }
    }
}

fn first_candidate(
    rules: &RepositoryRules,
    ticket: &TicketRepoFacts<'_>,
) -> Option<(String, Origin)> {
    if rules.from_description
        && let Some(m) = repo_line()
            .captures(ticket.description)
            .and_then(|c| c.get(1))
    {
        let url = m.as_str().trim_end_matches(['.', ',', ';', ')']);
        return Some((url.to_string(), Origin::Description));
    }
    if let Some(field) = &rules.custom_field
        && let Some(url) = ticket.raw_fields.get(field).and_then(field_text)
    {
        return Some((url, Origin::CustomField));
    }
    if let Some(url) = lookup_component(&rules.by_component, &ticket.components) {
        return Some((url, Origin::Component));
    }
    if let Some(url) = rules.by_project.get(ticket.project) {
        return Some((url.clone(), Origin::Project));
    }
    rules.default.clone().map(|url| (url, Origin::Default))
}

fn lookup_component(map: &BTreeMap<String, String>, components: &[String]) -> Option<String> {
    components.iter().find_map(|c| map.get(c).cloned())
}

/// The component names of a ticket's raw fields.
pub fn components(raw_fields: &Value) -> Vec<String> {
    raw_fields
        .get("components")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts<'a>(description: &'a str, raw: &'a Value) -> TicketRepoFacts<'a> {
        TicketRepoFacts {
            description,
            project: "OPS",
            components: components(raw),
            raw_fields: raw,
        }
    }

    #[test]
    fn first_match_wins_in_the_documented_order() {
        let mut rules = RepositoryRules {
            custom_field: Some("customfield_1".into()),
            by_component: BTreeMap::from([(
                "web".into(),
                "https://git.example.com/org/web.git".into(),
            )]),
            by_project: BTreeMap::from([(
                "OPS".into(),
                "https://git.example.com/org/ops.git".into(),
            )]),
            default: Some("https://git.example.com/org/default.git".into()),
            credential_hosts: vec!["git.example.com".into()],
            ..Default::default()
        };
        let raw = json!({"customfield_1": "https://git.example.com/org/field.git", "components": [{"name": "web"}]});
        let desc = "Fix it.\n\nRepo: https://git.example.com/org/desc.git\n";
        let url = |r: Resolution| match r {
            Resolution::Found { url, .. } => url,
            other => panic!("{other:?}"),
        };
        assert!(url(resolve(&rules, &facts(desc, &raw))).ends_with("desc.git"));
        assert!(url(resolve(&rules, &facts("no line", &raw))).ends_with("field.git"));
        let raw2 = json!({"components": [{"name": "web"}]});
        assert!(url(resolve(&rules, &facts("", &raw2))).ends_with("web.git"));
        assert!(url(resolve(&rules, &facts("", &json!({})))).ends_with("ops.git"));
        rules.by_project.clear();
        assert!(url(resolve(&rules, &facts("", &json!({})))).ends_with("default.git"));
        rules.default = None;
        assert_eq!(resolve(&rules, &facts("", &json!({}))), Resolution::Missing);
    }

    #[test]
    fn repo_lines_in_markdown_and_wiki_forms() {
        let rules = RepositoryRules {
            credential_hosts: vec!["github.com".into()],
            ..Default::default()
        };
        for desc in [
            "Repo: https://github.com/a/b",
            "  * repository: <https://github.com/a/b>",
            "*Repo:* https://github.com/a/b.",
            "text\nREPO:https://github.com/a/b\nmore",
        ] {
            assert_eq!(
                resolve(&rules, &facts(desc, &json!({}))),
                Resolution::Found {
                    url: "https://github.com/a/b".into(),
                    origin: Origin::Description
                },
                "{desc}"
            );
        }
    }

    #[test]
    fn without_an_allow_list_ticket_text_names_only_credential_hosts() {
        let mut rules = RepositoryRules {
            credential_hosts: vec!["github.com".into()],
            default: Some("https://git.internal.example/team/r.git".into()),
            ..Default::default()
        };
        let found = |desc: &str, rules: &RepositoryRules| {
            matches!(
                resolve(rules, &facts(desc, &json!({}))),
                Resolution::Found { .. }
            )
        };
        assert!(found("Repo: https://github.com/any/x.git", &rules));
        assert!(!found("Repo: https://their-host.example/x.git", &rules));
        assert!(!found("Repo: git@their-host.example:x.git", &rules));
        // The configuration's own URLs are trusted.
        assert!(found("no line", &rules));
        // No credential hosts: nothing from ticket text.
        rules.credential_hosts.clear();
        assert!(!found("Repo: https://github.com/any/x.git", &rules));
        assert!(found("no line", &rules));
    }

    #[test]
    fn hostile_urls_are_rejected() {
        let allowed = vec!["github.com/example-org".to_string()];
        for url in [
            "https://user:pw@github.com/example-org/x",
            "http://github.com/example-org/x",
            "file:///etc/passwd",
            "https://github.com/example-org/../other/x",
            "https://github.com/other-org/x",
            "https://evil.example/example-org/x",
            "git@evil.example:example-org/x",
            "https://github.com/example-org/x\u{7}",
            "$(rm -rf /)",
        ] {
            assert!(check_url(url, Some(&allowed), false).is_err(), "{url}");
        }
        assert!(
            check_url(
                "https://github.com/example-org/x.git",
                Some(&allowed),
                false
            )
            .is_ok()
        );
        assert!(check_url("git@github.com:example-org/x.git", Some(&allowed), false).is_ok());
        assert!(check_url("file:///srv/repo", None, true).is_ok());
        let rules = RepositoryRules {
            allowed,
            ..Default::default()
        };
        assert!(matches!(
            resolve(
                &rules,
                &facts("Repo: https://github.com/other/x", &json!({}))
            ),
            Resolution::Rejected {
                origin: Origin::Description,
                ..
            }
        ));
    }
}
