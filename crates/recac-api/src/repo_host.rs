//! Which hosts a repository URL points at, and scopes of the form `host[:port][/org]`.
//!
//! One rule for the operator and the agent: the source accepts a repository named in ticket
//! text only on a host in scope, and the agent gives its git token only to a host in scope.
//! A scope is a host (with its port when it is not the scheme's default) and optionally the
//! first path segment (the organisation or group).

use std::fmt;

/// One scope entry: a host (lower case, with `:port` when given) and an optional organisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostScope {
    host: String,
    org: Option<String>,
}

/// Why a scope entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not host[:port] or host[:port]/organisation ({why})")]
pub struct InvalidScope {
    pub entry: String,
    pub why: &'static str,
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

fn is_org_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'
}

impl HostScope {
    /// Parses `host`, `host:port`, `host/org` or `host:port/org`.
    pub fn parse(entry: &str) -> Result<Self, InvalidScope> {
        let invalid = |why| InvalidScope {
            entry: entry.to_string(),
            why,
        };
        let trimmed = entry.trim().trim_end_matches('/');
        let (authority, org) = match trimmed.split_once('/') {
            Some((_, o)) if o.is_empty() || o.contains('/') => {
                return Err(invalid("at most one path segment"));
            }
            Some((a, o)) => (a, Some(o)),
            None => (trimmed, None),
        };
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty() || !host.chars().all(is_host_char) {
            return Err(invalid(
                "a host name or address is letters, digits, `.` and `-`",
            ));
        }
        if let Some(port) = port
            && (port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(invalid("the port must be a number"));
        }
        if let Some(org) = org
            && (org.starts_with('.') || !org.chars().all(is_org_char))
        {
            return Err(invalid(
                "an organisation is letters, digits, `.`, `-` and `_`",
            ));
        }
        Ok(Self {
            host: authority.to_ascii_lowercase(),
            org: org.map(str::to_string),
        })
    }

    /// Parses a comma- or whitespace-separated list; empty entries are skipped.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, InvalidScope> {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
            .map(Self::parse)
            .collect()
    }

    /// The host, with `:port` when the entry names one.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The organisation (first path segment), when the entry names one.
    pub fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }

    /// Whether a repository at `location` is within this scope (organisations compare
    /// without regard to case, as GitHub and GitLab treat them).
    pub fn admits(&self, location: &RepoLocation) -> bool {
        self.host == location.host
            && self.org.as_deref().is_none_or(|o| {
                location
                    .org
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(o))
            })
    }
}

impl fmt::Display for HostScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.org {
            Some(org) => write!(f, "{}/{org}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// How a clone URL reaches its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Https,
    /// Plain HTTP: never given a credential.
    Http,
    Ssh,
}

/// Where a clone URL points: its transport, host (with a non-default port) and organisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoLocation {
    pub transport: Transport,
    pub host: String,
    pub org: Option<String>,
}

impl RepoLocation {
    /// Reads `https://`, `http://`, `ssh://` and scp-like `user@host:path` URLs; `None` for
    /// anything else (`file://`, a local path).
    pub fn of(url: &str) -> Option<Self> {
        let (transport, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Transport::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Transport::Http, rest)
        } else if let Some(rest) = url.strip_prefix("ssh://") {
            (Transport::Ssh, rest)
        } else if url.contains("://") {
            return None;
        } else {
            // scp-like: [user@]host:path
            let (user_host, path) = url.split_once(':')?;
            if user_host.contains('/') {
                return None;
            }
            let host = user_host.rsplit('@').next()?.to_ascii_lowercase();
            return (!host.is_empty()).then(|| Self {
                transport: Transport::Ssh,
                host,
                org: first_segment(path),
            });
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host_port = authority.rsplit('@').next()?.to_ascii_lowercase();
        let default_port = match transport {
            Transport::Https => ":443",
            Transport::Http => ":80",
            Transport::Ssh => ":22",
        };
        let host = host_port
            .strip_suffix(default_port)
            .map(str::to_string)
            .unwrap_or(host_port);
        (!host.is_empty()).then(|| Self {
            transport,
            host,
            org: first_segment(path),
        })
    }

    /// Whether any of `scopes` admits this location.
    pub fn in_scope(&self, scopes: &[HostScope]) -> bool {
        scopes.iter().any(|s| s.admits(self))
    }
}

fn first_segment(path: &str) -> Option<String> {
    path.split('/')
        .find(|s| !s.is_empty())
        .map(|s| s.trim_end_matches(".git").to_string())
        .filter(|s| !s.is_empty())
}

/// Renders scopes as the comma-separated list the agent reads.
pub fn render_list(scopes: &[HostScope]) -> String {
    scopes
        .iter()
        .map(HostScope::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scopes() {
        let s = HostScope::parse("GitHub.com/Example-Org").unwrap();
        assert_eq!((s.host(), s.org()), ("github.com", Some("Example-Org")));
        let s = HostScope::parse("127.0.0.1:8443").unwrap();
        assert_eq!((s.host(), s.org()), ("127.0.0.1:8443", None));
        for bad in [
            "",
            "https://github.com",
            "github.com/a/b",
            "git hub.com",
            "host:port",
            "host/$(x)",
            "host/..",
            "a@b",
        ] {
            assert!(HostScope::parse(bad).is_err(), "{bad:?}");
        }
        let list = HostScope::parse_list("github.com, gitlab.example.com/team ").unwrap();
        assert_eq!(render_list(&list), "github.com,gitlab.example.com/team");
    }

    #[test]
    fn locations() {
        let l = RepoLocation::of("https://x-access-token@GitHub.com:443/org/r.git").unwrap();
        assert_eq!(
            l,
            RepoLocation {
                transport: Transport::Https,
                host: "github.com".into(),
                org: Some("org".into())
            }
        );
        let l = RepoLocation::of("http://127.0.0.1:8080/r.git").unwrap();
        assert_eq!(
            (l.transport, l.host.as_str()),
            (Transport::Http, "127.0.0.1:8080")
        );
        assert_eq!(l.org.as_deref(), Some("r"));
        let l = RepoLocation::of("git@github.com:org/r.git").unwrap();
        assert_eq!(
            (l.transport, l.host.as_str(), l.org.as_deref()),
            (Transport::Ssh, "github.com", Some("org"))
        );
        assert!(RepoLocation::of("file:///srv/r.git").is_none());
        assert!(RepoLocation::of("/srv/r.git").is_none());
    }

    #[test]
    fn scopes_admit_hosts_and_orgs() {
        let scopes = HostScope::parse_list("github.com/acme,git.example.com:8443").unwrap();
        let admitted = |url: &str| RepoLocation::of(url).unwrap().in_scope(&scopes);
        assert!(admitted("https://github.com/ACME/widgets.git"));
        assert!(!admitted("https://github.com/other/widgets.git"));
        assert!(admitted("https://git.example.com:8443/any/repo"));
        assert!(!admitted("https://git.example.com/any/repo"));
        assert!(!admitted("https://evil.example/acme/x.git"));
        assert!(!admitted("https://github.com.evil.example/acme/x.git"));
    }
}
