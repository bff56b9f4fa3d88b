//! Opening (or reusing) a pull request through the GitHub REST API.

use std::time::Duration;

use serde_json::{Value, json};

use crate::redact::Redactor;

/// A repository on GitHub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitHubRepo {
    pub owner: String,
    pub name: String,
}

impl GitHubRepo {
    /// From `owner/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().trim_matches('/').split('/');
        let owner = parts.next().filter(|p| !p.is_empty())?;
        let name = parts
            .next()
            .filter(|p| !p.is_empty())?
            .trim_end_matches(".git");
        if parts.next().is_some() || name.is_empty() {
            return None;
        }
        Some(Self {
            owner: owner.into(),
            name: name.into(),
        })
    }
}

/// The host git remotes use for the GitHub whose API is at `api_url`: `github.com` for
/// `api.github.com`, the API's own host for GitHub Enterprise.
pub fn web_host(api_url: &str) -> Option<String> {
    let host = url::Url::parse(api_url)
        .ok()?
        .host_str()?
        .to_ascii_lowercase();
    Some(if host == "api.github.com" {
        "github.com".into()
    } else {
        host
    })
}

/// The repository a remote URL names, when the remote is on that GitHub (pure).
pub fn repo_from_remote(remote: &str, api_url: &str) -> Option<GitHubRepo> {
    let host = web_host(api_url)?;
    let path = if let Ok(u) = url::Url::parse(remote) {
        if !matches!(u.scheme(), "https" | "http" | "ssh" | "git") {
            return None;
        }
        if u.host_str()?.to_ascii_lowercase() != host {
            return None;
        }
        u.path().to_string()
    } else {
        // scp-like: git@github.com:owner/name.git
        let (userhost, path) = remote.split_once(':')?;
        let h = userhost.rsplit('@').next()?;
        if h.to_ascii_lowercase() != host {
            return None;
        }
        path.to_string()
    };
    GitHubRepo::parse(&path)
}

/// A failed GitHub call.
#[derive(Debug, thiserror::Error)]
#[error("GitHub API: {message}")]
pub struct GitHubError {
    /// Whether another attempt would fail the same way.
    pub permanent: bool,
    pub message: String,
}

/// A GitHub REST API client for pull requests.
pub struct GitHub {
    http: reqwest::Client,
    api_url: String,
    token: String,
    redactor: Redactor,
}

/// What to open.
pub struct PullRequest<'a> {
    pub head: &'a str,
    pub base: &'a str,
    pub title: &'a str,
    pub body: &'a str,
}

impl GitHub {
    pub fn new(api_url: &str, token: &str, redactor: Redactor) -> Result<Self, GitHubError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("recac/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GitHubError {
                permanent: true,
                message: e.to_string(),
            })?;
        Ok(Self {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            redactor,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), GitHubError> {
        let resp = req.send().await.map_err(|e| GitHubError {
            permanent: false,
            message: self.redactor.redact(&format!("request failed: {e}")),
        })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    fn fail(&self, what: &str, status: u16, body: &Value) -> GitHubError {
        let message = body.get("message").and_then(Value::as_str).unwrap_or("");
        let errors = body
            .get("errors")
            .map(|e| e.to_string())
            .unwrap_or_default();
        GitHubError {
            permanent: matches!(status, 401 | 403 | 404 | 422),
            message: self.redactor.redact(&format!(
                "{what} failed with HTTP {status}: {message} {errors}"
            )),
        }
    }

    /// The open pull request from `head`, if any.
    pub async fn find_open(
        &self,
        repo: &GitHubRepo,
        head: &str,
    ) -> Result<Option<String>, GitHubError> {
        let head_q: String =
            url::form_urlencoded::byte_serialize(format!("{}:{head}", repo.owner).as_bytes())
                .collect();
        let path = format!(
            "/repos/{}/{}/pulls?state=open&head={head_q}",
            repo.owner, repo.name
        );
        let (status, body) = self.send(self.request(reqwest::Method::GET, &path)).await?;
        if status != 200 {
            return Err(self.fail("listing pull requests", status, &body));
        }
        Ok(body
            .as_array()
            .and_then(|list| list.first())
            .and_then(|pr| pr.get("html_url"))
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// The URL of the open pull request from `pr.head`: the existing one, or a new one.
    pub async fn ensure(
        &self,
        repo: &GitHubRepo,
        pr: &PullRequest<'_>,
    ) -> Result<String, GitHubError> {
        if let Some(url) = self.find_open(repo, pr.head).await? {
            tracing::info!(%url, "reusing the open pull request");
            return Ok(url);
        }
        let path = format!("/repos/{}/{}/pulls", repo.owner, repo.name);
        let req = self
            .request(reqwest::Method::POST, &path)
            .json(&json!({"title": pr.title, "head": pr.head, "base": pr.base, "body": pr.body}));
        let (status, body) = self.send(req).await?;
        match status {
            200 | 201 => body
                .get("html_url")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| GitHubError {
                    permanent: false,
                    message: "reply without html_url".into(),
                }),
            422 => match self.find_open(repo, pr.head).await? {
                // Someone opened it in between.
                Some(url) => Ok(url),
                None => Err(self.fail("creating the pull request", status, &body)),
            },
            _ => Err(self.fail("creating the pull request", status, &body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repos_from_remotes() {
        let gh = "https://api.github.com";
        let want = Some(GitHubRepo {
            owner: "o".into(),
            name: "r".into(),
        });
        assert_eq!(repo_from_remote("https://github.com/o/r.git", gh), want);
        assert_eq!(repo_from_remote("https://github.com/o/r", gh), want);
        assert_eq!(repo_from_remote("git@github.com:o/r.git", gh), want);
        assert_eq!(repo_from_remote("ssh://git@github.com/o/r.git", gh), want);
        assert_eq!(repo_from_remote("https://gitlab.com/o/r.git", gh), None);
        assert_eq!(repo_from_remote("file:///srv/o/r.git", gh), None);
        assert_eq!(repo_from_remote("https://github.com/o/r/extra", gh), None);
        assert_eq!(
            repo_from_remote("https://ghe.corp/o/r.git", "https://ghe.corp/api/v3"),
            want
        );
        assert_eq!(GitHubRepo::parse("o/r"), want);
        assert_eq!(GitHubRepo::parse("o"), None);
    }
}
