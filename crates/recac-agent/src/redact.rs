//! Removes credentials from everything the agent prints, logs, reports or hands to a model.
//!
//! Two layers: the exact values of the credentials the agent was given (and their common
//! encodings), and the shapes of well-known tokens (GitHub, OpenAI, Anthropic, Slack, AWS,
//! GitLab, JWTs, `Authorization` headers and passwords inside URLs).

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use regex::Regex;

/// What a removed value is replaced with.
pub const MASK: &str = "[REDACTED]";

/// Secrets shorter than this are not redacted by value (they would mangle ordinary text).
const MIN_SECRET_LEN: usize = 4;

/// Removes secrets from text. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Redactor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Exact values, longest first so that a value containing another is removed whole.
    values: Vec<String>,
    /// Patterns whose whole match is replaced.
    shapes: Vec<Regex>,
    /// Patterns whose first group is kept and the rest of the match replaced.
    prefixed: Vec<Regex>,
}

fn shapes() -> Vec<Regex> {
    [
        r"\bgh[pousr]_[A-Za-z0-9]{30,}",
        r"\bgithub_pat_[A-Za-z0-9_]{22,}",
        r"\bsk-[A-Za-z0-9_\-]{20,}",
        r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",
        r"\bAKIA[0-9A-Z]{16}",
        r"\bglpat-[A-Za-z0-9_\-]{20,}",
        r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    ]
    .iter()
    .filter_map(|p| Regex::new(p).ok())
    .collect()
}

fn prefixed() -> Vec<Regex> {
    [
        // Authorization: Bearer xxx / Basic xxx / token xxx
        r"(?i)(authorization[\x22']?\s*[:=]\s*[\x22']?(?:bearer|basic|token)\s+)[^\s\x22',;]+",
        r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{12,}",
        // x-api-key: xxx
        r"(?i)(x-api-key[\x22']?\s*[:=]\s*[\x22']?)[^\s\x22',;]+",
        // https://user:password@host
        r"([a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+@",
    ]
    .iter()
    .filter_map(|p| Regex::new(p).ok())
    .collect()
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(Vec::<String>::new())
    }
}

impl Redactor {
    /// A redactor for these credential values (empty and very short values are ignored).
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut values: Vec<String> = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref().trim();
            if secret.chars().count() < MIN_SECRET_LEN {
                continue;
            }
            values.push(secret.to_string());
            // The forms a credential takes in an HTTP basic-auth header.
            values.push(b64.encode(secret));
            for user in ["x-access-token", "git", "oauth2", "token"] {
                values.push(b64.encode(format!("{user}:{secret}")));
            }
            values.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self {
            inner: Arc::new(Inner {
                values,
                shapes: shapes(),
                prefixed: prefixed(),
            }),
        }
    }

    /// A redactor that also removes these further values.
    pub fn with_secrets<I, S>(&self, more: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut all: Vec<String> = self.inner.values.clone();
        all.extend(more.into_iter().map(|s| s.as_ref().to_string()));
        Self::new(all)
    }

    /// `text` with every known secret value and token shape replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in &self.inner.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), MASK);
            }
        }
        for re in &self.inner.shapes {
            if re.is_match(&out) {
                out = re.replace_all(&out, MASK).into_owned();
            }
        }
        for re in &self.inner.prefixed {
            if re.is_match(&out) {
                out = re
                    .replace_all(&out, |caps: &regex::Captures<'_>| {
                        let keep = caps.get(1).map_or("", |m| m.as_str());
                        if caps.get(0).is_some_and(|m| m.as_str().ends_with('@')) {
                            format!("{keep}{MASK}@")
                        } else {
                            format!("{keep}{MASK}")
                        }
                    })
                    .into_owned();
            }
        }
        out
    }

    /// [`Redactor::redact`] over bytes that may not be UTF-8.
    pub fn redact_bytes(&self, bytes: &[u8]) -> String {
        self.redact(&String::from_utf8_lossy(bytes))
    }
}

/// A writer that redacts each write before passing it on. `tracing_subscriber::fmt` writes
/// one whole event per call, so secrets are never split across writes.
pub struct RedactingWriter<W: Write> {
    redactor: Redactor,
    inner: W,
}

impl<W: Write> RedactingWriter<W> {
    pub fn new(redactor: Redactor, inner: W) -> Self {
        Self { redactor, inner }
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = self.redactor.redact_bytes(buf);
        self.inner.write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A `MakeWriter` for `tracing_subscriber` that redacts everything written to stderr.
#[derive(Clone)]
pub struct RedactingStderr {
    redactor: Redactor,
}

impl RedactingStderr {
    pub fn new(redactor: Redactor) -> Self {
        Self { redactor }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter<std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.redactor.clone(), std::io::stderr())
    }
}

/// A `MakeWriter` that redacts into a shared buffer (for tests and for capturing logs).
#[derive(Clone)]
pub struct RedactingBuffer {
    redactor: Redactor,
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl RedactingBuffer {
    pub fn new(redactor: Redactor) -> Self {
        Self {
            redactor,
            buffer: Arc::default(),
        }
    }

    /// Everything written so far.
    pub fn contents(&self) -> String {
        let guard = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&guard).into_owned()
    }
}

/// Writes into a [`RedactingBuffer`].
pub struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingBuffer {
    type Writer = RedactingWriter<BufferWriter>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.redactor.clone(), BufferWriter(self.buffer.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_values_and_their_encodings() {
        let r = Redactor::new(["hunter2-secret", "ab"]);
        assert_eq!(r.redact("pw=hunter2-secret!"), format!("pw={MASK}!"));
        let enc = base64::engine::general_purpose::STANDARD.encode("x-access-token:hunter2-secret");
        assert_eq!(r.redact(&format!("Basic {enc}")), format!("Basic {MASK}"));
        // Too short to redact by value.
        assert_eq!(r.redact("ab cd"), "ab cd");
    }

    #[test]
    fn removes_token_shapes() {
        let r = Redactor::default();
        let gh = format!("ghp_{}", "a1".repeat(18));
        assert_eq!(
            r.redact(&format!("token {gh} end")),
            format!("token {MASK} end")
        );
        assert!(
            !r.redact("key sk-proj-abcdefghijklmnopqrstuvwx")
                .contains("abcdefghij")
        );
        assert!(
            !r.redact("sk-ant-api03-abcdefghijklmnopqrstuvwx")
                .contains("abcdefghij")
        );
        assert_eq!(
            r.redact("Authorization: Bearer abc.def-ghi"),
            format!("Authorization: Bearer {MASK}")
        );
        assert_eq!(r.redact("x-api-key: zzz"), format!("x-api-key: {MASK}"));
        assert_eq!(
            r.redact("cloning https://bob:pa55word@example.com/r.git"),
            format!("cloning https://bob:{MASK}@example.com/r.git")
        );
        assert_eq!(r.redact("plain text stays"), "plain text stays");
        // Token prefixes inside ordinary words are not tokens.
        let branch = "recac/task-abcdefghijklmnopqrstuvwxyz";
        assert_eq!(r.redact(branch), branch);
    }

    #[test]
    fn writer_redacts() {
        let buf = RedactingBuffer::new(Redactor::new(["topsecretvalue"]));
        let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&buf);
        w.write_all(b"a topsecretvalue b").unwrap();
        assert_eq!(buf.contents(), format!("a {MASK} b"));
    }

    proptest::proptest! {
        #[test]
        fn a_secret_never_survives(prefix in "[a-z ]{0,20}", secret in "[A-Za-z0-9]{8,30}", suffix in "[a-z ]{0,20}") {
            let r = Redactor::new([secret.as_str()]);
            let out = r.redact(&format!("{prefix}{secret}{suffix}"));
            proptest::prop_assert!(!out.contains(&secret));
        }
    }
}
