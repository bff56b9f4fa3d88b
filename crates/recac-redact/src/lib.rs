//! Removes credentials from text, in three layers applied in order:
//!
//! 1. **Known values** (the secrets a process was given): as they are and in the forms they are
//!    commonly printed in: URL-encoded, JSON-escaped, hex, base64 (standard and URL-safe, alone,
//!    as `echo | base64` prints it, as a `user:value` basic-auth credential, and embedded in any
//!    longer encoded text), and each line of a multi-line value. Values (and forms) of 8 bytes
//!    or more are found even when split across lines (`fold -w 10`, a `\r\n` in the middle, a
//!    wrapped base64 dump, an escaped `\n`): see [`Redactor::redact`].
//! 2. **Extra patterns** given by the caller (regular expressions).
//! 3. **Token shapes**: GitHub, OpenAI, Anthropic, Atlassian, AWS, Slack, GitLab, Google,
//!    Stripe, npm and Hugging Face tokens, JWTs, `Authorization` and API-key headers, bearer
//!    tokens, credentials in URLs and private key blocks ([`SHAPES`]).
//!
//! Pure: no I/O. A [`Redactor`] is cheap to clone and safe to share between threads.
//!
//! ```
//! let r = recac_redact::Redactor::builder()
//!     .secrets(["hunter2-database-password"])
//!     .pattern(r"internal-[0-9]{6}")
//!     .build()?;
//! assert_eq!(
//!     r.redact("pw hunter2-data\nbase-password id internal-123456"),
//!     "pw [REDACTED]\n[REDACTED] id [REDACTED]"
//! );
//! # Ok::<(), recac_redact::Error>(())
//! ```

mod shapes;
mod values;

use std::fmt;
use std::sync::Arc;

pub use shapes::SHAPES;
pub use values::MIN_SECRET_LEN;

use shapes::Pattern;
use values::Values;

/// What a removed value is replaced with.
pub const MASK: &str = "[REDACTED]";

/// A redactor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An extra pattern is not a valid regular expression.
    #[error("redaction pattern #{index} `{pattern}` is not a valid regular expression: {source}")]
    InvalidPattern {
        /// Its position in the list given (from 0).
        index: usize,
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
}

/// Removes known secret values, extra patterns and token shapes from text.
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Inner>,
}

struct Inner {
    /// The values as given (trimmed, deduplicated), kept to build [`Redactor::with_secrets`].
    secrets: Vec<Vec<u8>>,
    values: Values,
    /// The extra patterns' sources and compiled forms.
    patterns: Vec<(String, Arc<Pattern>)>,
}

impl fmt::Debug for Redactor {
    // Never prints the values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.inner.secrets.len())
            .field(
                "patterns",
                &self
                    .inner
                    .patterns
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for Redactor {
    /// Token shapes only.
    fn default() -> Self {
        Self::from_parts(Vec::new(), Vec::new())
    }
}

/// Builds a [`Redactor`].
#[derive(Clone, Default)]
pub struct RedactorBuilder {
    secrets: Vec<Vec<u8>>,
    patterns: Vec<String>,
}

impl fmt::Debug for RedactorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactorBuilder")
            .field("secrets", &self.secrets.len())
            .field("patterns", &self.patterns)
            .finish()
    }
}

impl RedactorBuilder {
    /// Adds a secret value (text or bytes). Surrounding whitespace is ignored; values shorter
    /// than [`MIN_SECRET_LEN`] characters are not redacted by value.
    pub fn secret(mut self, value: impl AsRef<[u8]>) -> Self {
        self.secrets.push(value.as_ref().to_vec());
        self
    }

    /// Adds secret values.
    pub fn secrets<I, S>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        self.secrets
            .extend(values.into_iter().map(|v| v.as_ref().to_vec()));
        self
    }

    /// Adds a regular expression ([`regex`] syntax) whose matches are masked: the whole match,
    /// or only its group named `secret` when it has one.
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.patterns.push(pattern.into());
        self
    }

    /// Adds regular expressions, as [`RedactorBuilder::pattern`].
    pub fn patterns<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.patterns.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// The redactor; fails on the first pattern that is not a valid regular expression.
    pub fn build(self) -> Result<Redactor, Error> {
        let mut patterns = Vec::with_capacity(self.patterns.len());
        for (index, pattern) in self.patterns.into_iter().enumerate() {
            let compiled = Pattern::new(&pattern).map_err(|source| Error::InvalidPattern {
                index,
                pattern: pattern.clone(),
                source: Box::new(source),
            })?;
            patterns.push((pattern, Arc::new(compiled)));
        }
        Ok(Redactor::from_parts(self.secrets, patterns))
    }
}

impl Redactor {
    /// A builder: secrets, extra patterns, then [`RedactorBuilder::build`].
    pub fn builder() -> RedactorBuilder {
        RedactorBuilder::default()
    }

    /// A redactor for these secret values and the token shapes (no extra patterns, so it cannot
    /// fail).
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        Self::from_parts(
            secrets.into_iter().map(|s| s.as_ref().to_vec()).collect(),
            Vec::new(),
        )
    }

    fn from_parts(secrets: Vec<Vec<u8>>, patterns: Vec<(String, Arc<Pattern>)>) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| s.trim_ascii().to_vec())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort();
        secrets.dedup();
        Self {
            inner: Arc::new(Inner {
                values: Values::new(&secrets),
                secrets,
                patterns,
            }),
        }
    }

    /// A redactor that also removes these further values (same patterns).
    pub fn with_secrets<I, S>(&self, more: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut secrets = self.inner.secrets.clone();
        secrets.extend(more.into_iter().map(|s| s.as_ref().to_vec()));
        Self::from_parts(secrets, self.inner.patterns.clone())
    }

    /// How many distinct secret values it removes.
    pub fn secret_count(&self) -> usize {
        self.inner.secrets.len()
    }

    /// `text` with every known value, extra pattern match and token shape replaced by [`MASK`].
    ///
    /// A known value is also found when separators split it: ASCII whitespace (line breaks
    /// included) and the escapes `\n`, `\r`, `\t`. Line breaks inside a masked value stay and each
    /// piece between them becomes one mask, so `abcd\nefgh` becomes `[REDACTED]\n[REDACTED]`
    /// and the text keeps its line count.
    pub fn redact(&self, text: &str) -> String {
        let mut out = self.inner.values.redact(text);
        for (_, pattern) in &self.inner.patterns {
            if let std::borrow::Cow::Owned(s) = pattern.redact(&out) {
                out = s;
            }
        }
        for pattern in shapes::builtin() {
            if let std::borrow::Cow::Owned(s) = pattern.redact(&out) {
                out = s;
            }
        }
        out
    }

    /// Whether `text` holds one of the known values in any of the forms [`Redactor::redact`]
    /// finds (token shapes and extra patterns are not counted: a repository may hold example
    /// tokens, but never this process's own secrets).
    pub fn contains_secret(&self, text: &str) -> bool {
        !self.inner.values.is_empty() && self.inner.values.redact(text) != text
    }

    /// [`Redactor::redact`] over bytes that may not be UTF-8 (invalid sequences become U+FFFD).
    pub fn redact_bytes(&self, bytes: &[u8]) -> String {
        self.redact(&String::from_utf8_lossy(bytes))
    }
}

#[cfg(test)]
mod tests;
