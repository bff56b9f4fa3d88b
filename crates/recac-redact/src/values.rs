//! Known secret values: the forms they are printed in, and matching that sees through line
//! breaks.
//!
//! A value printed across lines (`fold -w 10`, a base64 dump wrapped at 76 columns, a `\r\n`
//! in the middle, an escaped `\n` in JSON) is found on a *compact view* of the text: the text
//! with every separator removed, each remaining byte remembering its offset in the original.
//! A match there maps back to a span of the original text, whose pieces are masked while the
//! line breaks between them are kept (so line structure survives).

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use regex::{Regex, RegexBuilder};

use crate::MASK;

/// Values shorter than this (in characters) are not redacted: they would mangle ordinary text.
pub const MIN_SECRET_LEN: usize = 4;
/// Forms at least this long (in bytes, separators removed) are also found when split across
/// lines; shorter ones only when printed whole, where a false match is less likely.
const MIN_SPLIT_LEN: usize = 8;
/// A line of a multi-line value at least this long is redacted on its own too.
const MIN_LINE_LEN: usize = 12;
/// Shortest base64 fragment matched for a value embedded in a longer encoded text.
const MIN_CORE_LEN: usize = 8;

/// Basic-auth user names whose `user:value` base64 form is common in HTTP logs.
const BASIC_USERS: &[&str] = &["x-access-token", "git", "oauth2", "token", "x-token-auth"];

/// Length of the separator starting at `bytes[i]` (0 when there is none): ASCII whitespace, or
/// the two-character escapes `\n`, `\r`, `\t` that JSON and quoted log text use.
pub fn separator_len(bytes: &[u8], i: usize) -> usize {
    match bytes.get(i) {
        Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) => 1,
        Some(b'\\') if matches!(bytes.get(i + 1), Some(b'n' | b'r' | b't')) => 2,
        _ => 0,
    }
}

/// Length of the line break starting at `bytes[i]` (0 when there is none), escaped ones included.
fn line_break_len(bytes: &[u8], i: usize) -> usize {
    match bytes.get(i) {
        Some(b'\n' | b'\r') => 1,
        Some(b'\\') if matches!(bytes.get(i + 1), Some(b'n' | b'r')) => 2,
        _ => 0,
    }
}

/// `text` without separators, with the original offset of each byte kept.
struct Compact {
    text: String,
    offsets: Vec<usize>,
}

fn compact(text: &str) -> Compact {
    let bytes = text.as_bytes();
    let mut kept = Vec::with_capacity(bytes.len());
    let mut offsets = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let sep = separator_len(bytes, i);
        if sep > 0 {
            i += sep;
        } else {
            kept.push(bytes[i]);
            offsets.push(i);
            i += 1;
        }
    }
    // Only ASCII bytes were removed, so the rest is still UTF-8.
    let text = String::from_utf8(kept)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Compact { text, offsets }
}

fn is_base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// One form of a secret value to look for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Needle {
    text: String,
    /// A base64 form: a match grows to the whole encoded word around it.
    base64: bool,
}

/// The forms `secret` may be printed in: as is, each line of a multi-line value, URL-encoded,
/// JSON-escaped, hex, and base64 (standard and URL-safe alphabets, alone, followed by a newline
/// as `echo | base64` prints it, and as part of any longer encoded text).
fn forms(secret: &[u8]) -> Vec<Needle> {
    let plain = String::from_utf8_lossy(secret).into_owned();
    if plain.chars().count() < MIN_SECRET_LEN {
        return Vec::new();
    }
    let mut out = vec![Needle {
        text: plain.clone(),
        base64: false,
    }];
    let mut exact = |text: String| {
        out.push(Needle {
            text,
            base64: false,
        })
    };
    if plain.contains('\n') {
        for line in plain.lines().map(str::trim) {
            if line.len() >= MIN_LINE_LEN {
                exact(line.to_string());
            }
        }
    }
    exact(percent_encode(secret, false, true));
    exact(percent_encode(secret, false, false));
    exact(percent_encode(secret, true, true));
    exact(json_escape(&plain));
    exact(hex(secret, false));
    exact(hex(secret, true));

    let mut with_newline = secret.to_vec();
    with_newline.push(b'\n');
    for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
        let mut encoded = vec![engine.encode(secret), engine.encode(&with_newline)];
        for user in BASIC_USERS {
            encoded.push(engine.encode([user.as_bytes(), b":", secret].concat()));
        }
        for offset in 0..3 {
            let core = base64_core(&engine, secret, offset);
            if core.len() >= MIN_CORE_LEN {
                encoded.push(core);
            }
        }
        out.extend(
            encoded
                .into_iter()
                .map(|text| Needle { text, base64: true }),
        );
    }
    let mut seen = HashSet::new();
    out.retain(|n| !n.text.is_empty() && seen.insert(n.text.clone()));
    out
}

/// The base64 characters that depend only on `secret` when it starts `offset` bytes (mod 3)
/// into a longer encoded text: whatever surrounds it, an encoding of that text contains them.
fn base64_core(engine: &impl base64::Engine, secret: &[u8], offset: usize) -> String {
    let mut bytes = vec![0u8; offset];
    bytes.extend_from_slice(secret);
    let encoded = engine.encode(&bytes);
    // Character c covers bits [6c, 6c + 6); keep those inside the secret's bits.
    let first_bit = 8 * offset;
    let end_bit = 8 * (offset + secret.len());
    let first = first_bit.div_ceil(6);
    let Some(last_end) = end_bit.checked_sub(6).map(|b| b / 6 + 1) else {
        return String::new();
    };
    encoded
        .get(first..last_end.min(encoded.len()))
        .unwrap_or_default()
        .to_string()
}

fn percent_encode(bytes: &[u8], plus_for_space: bool, upper: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            b' ' if plus_for_space => out.push('+'),
            _ if upper => out.push_str(&format!("%{b:02X}")),
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// Finds every occurrence (overlapping ones too) of a set of literals.
#[derive(Debug)]
struct Literals {
    /// One alternation, longest first; `None` when there is nothing to find or it would not
    /// compile (then each literal is searched on its own).
    regex: Option<Regex>,
    literals: Vec<String>,
}

impl Literals {
    fn new(mut literals: Vec<String>) -> Self {
        literals.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        literals.dedup();
        let regex = (!literals.is_empty())
            .then(|| {
                let alternation: Vec<String> = literals.iter().map(|l| regex::escape(l)).collect();
                RegexBuilder::new(&alternation.join("|"))
                    .size_limit(256 << 20)
                    .dfa_size_limit(64 << 20)
                    .build()
                    .ok()
            })
            .flatten();
        Self { regex, literals }
    }

    /// Byte ranges of every occurrence in `hay`.
    fn find(&self, hay: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        match &self.regex {
            Some(re) => {
                let mut at = 0;
                while let Some(m) = re.find_at(hay, at) {
                    out.push((m.start(), m.end()));
                    // Restart just after the match's first character, so that an occurrence
                    // overlapping this one is found too.
                    let step = hay[m.start()..].chars().next().map_or(1, char::len_utf8);
                    at = m.start() + step;
                    if at >= hay.len() {
                        break;
                    }
                }
            }
            None => {
                for literal in &self.literals {
                    out.extend(
                        hay.match_indices(literal.as_str())
                            .map(|(i, l)| (i, i + l.len())),
                    );
                }
            }
        }
        out
    }
}

/// Matches the known values of a redactor.
#[derive(Debug)]
pub struct Values {
    /// Forms long enough to be found across separators, compacted, searched in the compact view.
    split: Literals,
    /// Short forms, searched as they are.
    whole: Literals,
    /// Compacted base64 forms (for growing their matches).
    base64_split: HashSet<String>,
    base64_whole: HashSet<String>,
}

impl Values {
    pub fn new(secrets: &[Vec<u8>]) -> Self {
        let mut split = HashMap::new();
        let mut whole = HashMap::new();
        for secret in secrets {
            for needle in forms(secret) {
                let compacted = compact(&needle.text).text;
                if compacted.len() >= MIN_SPLIT_LEN {
                    let entry = split.entry(compacted).or_insert(false);
                    *entry |= needle.base64;
                } else {
                    let entry = whole.entry(needle.text).or_insert(false);
                    *entry |= needle.base64;
                }
            }
        }
        let flagged = |m: &HashMap<String, bool>| -> HashSet<String> {
            m.iter()
                .filter(|(_, b)| **b)
                .map(|(t, _)| t.clone())
                .collect()
        };
        Self {
            base64_split: flagged(&split),
            base64_whole: flagged(&whole),
            split: Literals::new(split.into_keys().collect()),
            whole: Literals::new(whole.into_keys().collect()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.split.literals.is_empty() && self.whole.literals.is_empty()
    }

    /// `text` with every occurrence of a known value masked.
    pub fn redact(&self, text: &str) -> String {
        if self.is_empty() || text.is_empty() {
            return text.to_string();
        }
        let bytes = text.as_bytes();
        let mut spans = Vec::new();
        for (start, end) in self.whole.find(text) {
            let span = if self.base64_whole.contains(&text[start..end]) {
                grow_base64(bytes, start, end)
            } else {
                (start, end)
            };
            spans.push(span);
        }
        let view = compact(text);
        for (start, end) in self.split.find(&view.text) {
            let span = (view.offsets[start], view.offsets[end - 1] + 1);
            let span = if self.base64_split.contains(&view.text[start..end]) {
                grow_base64(bytes, span.0, span.1)
            } else {
                span
            };
            spans.push(span);
        }
        if spans.is_empty() {
            return text.to_string();
        }
        mask_spans(text, spans)
    }
}

/// A base64 match grown to the encoded word around it (within its line): the characters at its
/// edges carry bits of the secret too.
fn grow_base64(bytes: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    while start > 0 && is_base64_char(bytes[start - 1]) {
        start -= 1;
    }
    while end < bytes.len() && (is_base64_char(bytes[end]) || bytes[end] == b'=') {
        end += 1;
    }
    (start, end)
}

/// `text` with the given byte spans masked: line breaks inside a span stay, and each piece
/// between them becomes one mask.
fn mask_spans(text: &str, mut spans: Vec<(usize, usize)>) -> String {
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (start, end) in merged {
        out.push_str(&text[done..start]);
        let mut i = start;
        let mut in_piece = false;
        while i < end {
            let sep = line_break_len(bytes, i).min(end - i);
            if sep > 0 {
                out.push_str(&text[i..i + sep]);
                in_piece = false;
                i += sep;
            } else {
                if !in_piece {
                    out.push_str(MASK);
                    in_piece = true;
                }
                i += 1;
            }
        }
        done = end;
    }
    out.push_str(&text[done..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn cores_are_found_inside_any_encoding() {
        let secret = b"Zx9-planted-VALUE-42";
        for prefix in ["", "a", "ab", "DB_PASSWORD=", "user:"] {
            for suffix in ["", "\n", "!tail"] {
                let message = [prefix.as_bytes(), secret, suffix.as_bytes()].concat();
                let encoded = STANDARD.encode(&message);
                let found = (0..3).any(|k| {
                    let core = base64_core(&STANDARD_NO_PAD, secret, k);
                    core.len() >= MIN_CORE_LEN && encoded.contains(&core)
                });
                assert!(found, "{prefix:?} {suffix:?} {encoded}");
            }
        }
    }

    #[test]
    fn compact_view_maps_back() {
        let c = compact("ab\r\ncd\\nef g");
        assert_eq!(c.text, "abcdefg");
        assert_eq!(c.offsets, vec![0, 1, 4, 5, 8, 9, 11]);
    }

    #[test]
    fn spans_keep_separators() {
        assert_eq!(
            mask_spans("x abc\ndef y", vec![(2, 9)]),
            format!("x {MASK}\n{MASK} y")
        );
        assert_eq!(
            mask_spans("abcdef", vec![(0, 2), (1, 4), (4, 5)]),
            format!("{MASK}f")
        );
    }

    #[test]
    fn fallback_search_without_regex() {
        let l = Literals {
            regex: None,
            literals: vec!["abc".into(), "bcd".into()],
        };
        assert_eq!(l.find("xabcd"), vec![(1, 4), (2, 5)]);
        let l = Literals::new(vec!["abc".into(), "bcd".into()]);
        assert_eq!(l.find("xabcd"), vec![(1, 4), (2, 5)]);
    }
}
