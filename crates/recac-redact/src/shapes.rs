//! Patterns: the shapes of well-known credentials, and the caller's own. A pattern with a
//! capture group named `secret` masks only that group (the header name or URL around it stays
//! readable); otherwise the whole match is masked.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

use crate::MASK;

/// The built-in shapes, each `(what, regex)`.
pub const SHAPES: &[(&str, &str)] = &[
    (
        "GitHub token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})",
    ),
    ("Anthropic key", r"\bsk-ant-[A-Za-z0-9_\-]{20,}"),
    (
        "OpenAI key",
        r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
    ),
    (
        "Atlassian API token",
        r"\bAT[AC]TT[A-Za-z0-9_\-+/]{20,}(?:=[A-Za-z0-9]{6,})?",
    ),
    (
        "AWS access key id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
    ),
    (
        "AWS secret key assignment",
        r#"(?i)\baws_?(?:secret_?access_?key|session_?token)["']?\s*[:=]\s*["']?(?P<secret>[A-Za-z0-9/+=]{16,})"#,
    ),
    (
        "Slack token",
        r"\b(?:xox[abposre]-[A-Za-z0-9\-]{10,}|xapp-[0-9]+-[A-Za-z0-9\-]{10,})",
    ),
    (
        "Slack webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9/_\-]+)",
    ),
    (
        "GitLab token",
        r"\bgl(?:pat|dt|rt|ptt|cbt|oas|soat|ft|imt|agent|wt)-[A-Za-z0-9_\-]{20,}",
    ),
    ("Google API key", r"\bAIza[0-9A-Za-z_\-]{35}"),
    ("Stripe key", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    ("npm token", r"\bnpm_[A-Za-z0-9]{36}"),
    ("Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}"),
    (
        "JWT",
        r"\beyJ[A-Za-z0-9_\-]{8,}\.(?:eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*|[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})",
    ),
    (
        "Authorization header",
        r#"(?i)\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?(?:(?:bearer|basic|token|digest|negotiate|bot|apikey|sso-key)\s+)?(?P<secret>[^\s"',;]+)"#,
    ),
    (
        "bearer token",
        r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/=\-]{12,})",
    ),
    (
        "API key header",
        r#"(?i)\b(?:x-api-key|api-key|x-auth-token|private-token|x-goog-api-key|x-access-token)["']?\s*[:=]\s*["']?(?P<secret>[^\s"',;@]+)"#,
    ),
    (
        "password in a URL",
        r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:(?P<secret>[^/\s]+)@",
    ),
    (
        "token as a URL's user",
        r"\b[A-Za-z][A-Za-z0-9+.\-]*://(?P<secret>[^/\s:@]{16,})@",
    ),
    (
        "private key block",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?P<secret>[\s\S]*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)",
    ),
];

/// A compiled pattern.
#[derive(Debug)]
pub struct Pattern {
    regex: Regex,
    /// Index of the `secret` group, when there is one.
    secret: Option<usize>,
}

impl Pattern {
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        let regex = Regex::new(pattern)?;
        let secret = regex
            .capture_names()
            .position(|name| name == Some("secret"));
        Ok(Self { regex, secret })
    }

    /// `text` with every match masked.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if !self.regex.is_match(text) {
            return Cow::Borrowed(text);
        }
        self.regex.replace_all(text, |caps: &Captures<'_>| {
            let Some(whole) = caps.get(0) else {
                return String::new();
            };
            match self.secret.and_then(|i| caps.get(i)) {
                Some(part) => {
                    let (a, b) = (part.start() - whole.start(), part.end() - whole.start());
                    let w = whole.as_str();
                    format!("{}{}{}", &w[..a], collapse(part.as_str()), &w[b..])
                }
                None => collapse(whole.as_str()),
            }
        })
    }
}

/// One mask in place of `text`, keeping the whitespace around it (a masked key block keeps its
/// first and last line breaks).
fn collapse(text: &str) -> String {
    let inner = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if inner.is_empty() {
        return text.to_string();
    }
    let lead = text.len()
        - text
            .trim_start_matches(|c: char| c.is_ascii_whitespace())
            .len();
    let trail = text.len()
        - text
            .trim_end_matches(|c: char| c.is_ascii_whitespace())
            .len();
    format!("{}{MASK}{}", &text[..lead], &text[text.len() - trail..])
}

/// The built-in shapes, compiled once.
pub fn builtin() -> &'static [Pattern] {
    static COMPILED: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
        SHAPES
            .iter()
            .filter_map(|(_, p)| Pattern::new(p).ok())
            .collect()
    });
    &COMPILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_shape_compiles() {
        assert_eq!(builtin().len(), SHAPES.len());
    }

    #[test]
    fn collapse_keeps_outer_whitespace() {
        assert_eq!(collapse("\nabc\ndef\n"), format!("\n{MASK}\n"));
        assert_eq!(collapse("abc"), MASK);
        assert_eq!(collapse(" \n"), " \n");
    }
}
