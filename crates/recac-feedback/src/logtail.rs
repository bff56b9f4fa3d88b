//! The agent's log tail, made safe to leave the cluster and cut to fit a comment.
//!
//! The agent already removes every value it knows; this second pass knows no values, only
//! shapes: the redactor's token shapes and the configured patterns. Shapes are also looked
//! for where a line-based pass cannot see them (a token folded over several lines, a token
//! inside base64 text): each one found is then removed everywhere as a known value, which the
//! redactor finds in its printed, encoded and split forms.

use std::sync::Arc;

use base64::Engine;
use recac_redact::Redactor;
use regex::Regex;

/// The second redactor: shapes, patterns and what they reveal in joined or decoded text.
#[derive(Clone)]
pub struct LogRedactor {
    base: Redactor,
    shapes: Arc<Vec<Regex>>,
    base64_run: Arc<Regex>,
}

impl std::fmt::Debug for LogRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRedactor")
            .field("patterns", &self.shapes.len())
            .finish()
    }
}

impl LogRedactor {
    /// `patterns` are the configured extra regular expressions.
    pub fn new(patterns: &[String]) -> Result<Self, recac_redact::Error> {
        let base = Redactor::builder()
            .patterns(patterns.iter().cloned())
            .build()?;
        let mut shapes = Vec::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let regex =
                Regex::new(pattern).map_err(|source| recac_redact::Error::InvalidPattern {
                    index,
                    pattern: pattern.clone(),
                    source: Box::new(source),
                })?;
            shapes.push(regex);
        }
        // The built-in shapes compile (the redactor's own tests check it).
        shapes.extend(
            recac_redact::SHAPES
                .iter()
                .filter_map(|(_, shape)| Regex::new(shape).ok()),
        );
        let base64_run = Regex::new(r"[A-Za-z0-9+/_\-]{16,}={0,2}").map_err(|source| {
            recac_redact::Error::InvalidPattern {
                index: usize::MAX,
                pattern: "base64 run".into(),
                source: Box::new(source),
            }
        })?;
        Ok(Self {
            base,
            shapes: Arc::new(shapes),
            base64_run: Arc::new(base64_run),
        })
    }

    /// `text` without anything that looks like a credential.
    pub fn redact(&self, text: &str) -> String {
        let mut found = Vec::new();
        let mut candidates = vec![text.to_string()];
        candidates.extend(joined_windows(text));
        for candidate in &candidates {
            self.collect(candidate, &mut found);
            for run in self.base64_run.find_iter(candidate) {
                for decoded in decodings(run.as_str()) {
                    self.collect(&decoded, &mut found);
                }
            }
        }
        found.sort();
        found.dedup();
        if found.is_empty() {
            self.base.redact(text)
        } else {
            self.base.with_secrets(found).redact(text)
        }
    }

    fn collect(&self, text: &str, found: &mut Vec<String>) {
        for shape in self.shapes.iter() {
            for captures in shape.captures_iter(text) {
                let value = captures
                    .name("secret")
                    .or_else(|| captures.get(0))
                    .map(|m| m.as_str().to_string());
                if let Some(value) = value
                    && value.len() >= recac_redact::MIN_SECRET_LEN
                {
                    found.push(value);
                }
            }
        }
    }
}

/// Lines that are too short to hold a whole token: the most joined per window.
const JOIN_LINES: usize = 12;

/// Text as it would read without its line breaks: from each line that may start a folded
/// token, the following lines glued on (as printed and with indentation trimmed). Each
/// window starts at a line start, so a token there still begins at a word boundary.
fn joined_windows(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut out = Vec::new();
    for start in 0..lines.len() {
        let end = (start + JOIN_LINES).min(lines.len());
        if end - start < 2 {
            continue;
        }
        // A window that starts mid-line begins at its last word: where a folded token would.
        let first = lines[start]
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or_default();
        let rest = &lines[start + 1..end];
        out.push(std::iter::once(first).chain(rest.iter().copied()).collect());
        out.push(
            std::iter::once(first.trim())
                .chain(rest.iter().map(|l| l.trim()))
                .collect(),
        );
    }
    out
}

/// What a base64-looking run may decode to, at each alignment, standard and URL-safe.
fn decodings(run: &str) -> Vec<String> {
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let trimmed = run.trim_end_matches('=');
    let mut out = Vec::new();
    for skip in 0..4 {
        let Some(rest) = trimmed.get(skip..) else {
            break;
        };
        // Whole groups only: a trailing partial group may be glued-on text.
        let usable = &rest[..rest.len() - rest.len() % 4];
        for engine in &engines {
            if let Ok(bytes) = engine.decode(usable) {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                if text
                    .chars()
                    .filter(|c| !c.is_control() || c.is_whitespace())
                    .count()
                    * 10
                    >= text.chars().count() * 9
                {
                    out.push(text);
                }
            }
        }
    }
    out
}

/// The end of a log: at most `lines` lines, and at most `budget` characters (UTF-16 units).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    pub text: String,
    /// Lines left out at the front to fit the budget.
    pub cut_lines: usize,
}

/// Keeps the last `lines` lines of `log` that fit `budget`, marking what was cut.
pub fn tail(log: &str, lines: usize, budget: usize) -> Tail {
    let all: Vec<&str> = log.lines().collect();
    let wanted = &all[all.len().saturating_sub(lines)..];
    let mut kept: Vec<String> = Vec::new();
    let mut used = 0;
    for line in wanted.iter().rev() {
        let units = line.encode_utf16().count() + 1;
        if used + units > budget {
            if kept.is_empty() {
                // One line longer than everything: keep its end.
                let chars: Vec<char> = line.chars().collect();
                let mut start = chars.len();
                let mut size = 0;
                while start > 0 && size + chars[start - 1].len_utf16() + 2 <= budget {
                    start -= 1;
                    size += chars[start].len_utf16();
                }
                kept.push(format!("…{}", chars[start..].iter().collect::<String>()));
            }
            break;
        }
        used += units;
        kept.push((*line).to_string());
    }
    kept.reverse();
    let cut_lines = wanted.len().saturating_sub(kept.len());
    Tail {
        text: kept.join("\n"),
        cut_lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITHUB: &str = "ghp_0123456789abcdefghijABCDEFGHIJklmnopqr";
    const ANTHROPIC: &str = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";

    fn redactor() -> LogRedactor {
        LogRedactor::new(&["corp-[0-9]{6}".into()]).expect("builds")
    }

    fn assert_clean(out: &str) {
        for needle in [
            GITHUB,
            ANTHROPIC,
            "hunter2pass",
            "corp-123456",
            "AKIAABCDEFGHIJKLMNOP",
        ] {
            assert!(!out.contains(needle), "{needle} left in:\n{out}");
        }
    }

    #[test]
    fn plain_shapes_urls_and_patterns_go() {
        let log = format!(
            "token {GITHUB}\nkey={ANTHROPIC}\ncloning https://bot:hunter2pass@git.example.com/r.git\nid corp-123456 AKIAABCDEFGHIJKLMNOP\nok"
        );
        let out = redactor().redact(&log);
        assert_clean(&out);
        assert!(out.ends_with("\nok"), "{out}");
        assert_eq!(out.lines().count(), 5);
    }

    #[test]
    fn folded_tokens_go() {
        let folded: String = GITHUB
            .as_bytes()
            .chunks(10)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
        let log = format!("before\n{folded}\nafter words");
        let out = redactor().redact(&log);
        for piece in GITHUB.as_bytes().chunks(10).skip(1) {
            let piece = String::from_utf8_lossy(piece);
            assert!(!out.contains(piece.as_ref()), "{piece} left in:\n{out}");
        }
        assert!(out.starts_with("before\n"), "{out}");
    }

    #[test]
    fn base64_encoded_tokens_go() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{ANTHROPIC}\n"));
        let wrapped = format!("{}\n{}", &encoded[..30], &encoded[30..]);
        for log in [format!("blob {encoded} end"), format!("dump:\n{wrapped}\n")] {
            let out = redactor().redact(&log);
            assert!(!out.contains(&encoded[..30]), "{out}");
            assert!(!out.contains(&encoded[30..]), "{out}");
        }
    }

    #[test]
    fn a_leaky_agent_log_keeps_its_shape() {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode("sk-ant-api03-BASE64plantedSECRETvalue0123456789xyz");
        let log = format!(
            "using token {GITHUB}\n{encoded}\nghp_FOLDE\nDplantedT\nOKENabcde\nfghijklmn\nop0123\ninternal id corp-424242\nerror: the build failed\n"
        );
        let out = redactor().redact(&log);
        for secret in [
            GITHUB,
            &encoded[..24],
            "DplantedT",
            "OKENabcde",
            "fghijklmn",
            "corp-424242",
        ] {
            assert!(!out.contains(secret), "{secret} left in:\n{out}");
        }
        assert_eq!(out.lines().count(), log.lines().count(), "{out}");
        assert!(out.starts_with("using token [REDACTED]\n"), "{out}");
        assert!(out.ends_with("error: the build failed\n"), "{out}");
    }

    #[test]
    fn ordinary_logs_stay() {
        let log = "running 12 tests\ntest login::timeout ... ok\nerror: expected 3, got 4";
        assert_eq!(redactor().redact(log), log);
    }

    #[test]
    fn the_tail_keeps_the_end_within_budget() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&log, 50, 10_000);
        assert_eq!(t.cut_lines, 0);
        assert!(t.text.starts_with("line 51\n") && t.text.ends_with("line 100"));
        let t = tail(&log, 50, 40);
        assert!(t.text.ends_with("line 100") && t.cut_lines > 40, "{t:?}");
        assert!(t.text.encode_utf16().count() <= 40);
        let long = "x".repeat(100);
        let t = tail(&long, 5, 20);
        assert!(
            t.text.starts_with('…') && t.text.encode_utf16().count() <= 20,
            "{t:?}"
        );
    }
}
