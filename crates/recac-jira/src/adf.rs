//! Comment bodies: Atlassian Document Format (Cloud) and wiki text (Data
//! Center), and cutting over-long text safely.

use serde_json::{Value, json};

/// Jira rejects a comment longer than this many characters (Java `String`
/// length, i.e. UTF-16 code units).
pub const JIRA_COMMENT_LIMIT: usize = 32_767;

/// The budget this client keeps comment text under: below the limit with
/// room for the markup that ADF or wiki formatting adds.
pub const COMMENT_BUDGET: usize = 32_000;

/// One block of a comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    /// Text; single newlines become hard breaks.
    Paragraph(String),
    /// Preformatted text with an optional language.
    Code {
        language: Option<String>,
        text: String,
    },
}

/// A comment as blocks, rendered as ADF (v3) or wiki markup (v2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Doc {
    pub blocks: Vec<Block>,
}

/// Removes control characters that ADF text nodes and wiki text cannot carry
/// (keeps `\n` and `\t`).
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

impl Doc {
    pub fn new() -> Doc {
        Doc::default()
    }

    pub fn paragraph(mut self, text: impl Into<String>) -> Doc {
        self.blocks.push(Block::Paragraph(text.into()));
        self
    }

    pub fn code(mut self, language: Option<&str>, text: impl Into<String>) -> Doc {
        self.blocks.push(Block::Code {
            language: language.map(str::to_string),
            text: text.into(),
        });
        self
    }

    /// Reads plain text: blank lines separate paragraphs, and fenced blocks
    /// (```` ```lang ```` … ```` ``` ````) become code blocks.
    pub fn from_text(text: &str) -> Doc {
        let mut doc = Doc::new();
        let mut para: Vec<&str> = Vec::new();
        let mut code: Option<(Option<String>, Vec<&str>)> = None;
        let flush = |doc: &mut Doc, para: &mut Vec<&str>| {
            if !para.is_empty() {
                doc.blocks.push(Block::Paragraph(para.join("\n")));
                para.clear();
            }
        };
        for line in text.lines() {
            if let Some((lang, lines)) = code.as_mut() {
                if line.trim_start().starts_with("```") {
                    doc.blocks.push(Block::Code {
                        language: lang.take(),
                        text: lines.join("\n"),
                    });
                    code = None;
                } else {
                    lines.push(line);
                }
            } else if let Some(rest) = line.trim_start().strip_prefix("```") {
                flush(&mut doc, &mut para);
                let lang = rest.trim();
                code = Some(((!lang.is_empty()).then(|| lang.to_string()), Vec::new()));
            } else if line.trim().is_empty() {
                flush(&mut doc, &mut para);
            } else {
                para.push(line);
            }
        }
        flush(&mut doc, &mut para);
        if let Some((language, lines)) = code {
            // An unclosed fence: keep its content as code.
            doc.blocks.push(Block::Code {
                language,
                text: lines.join("\n"),
            });
        }
        doc
    }

    /// The ADF document. Text nodes are never empty (Jira rejects them);
    /// an empty document gets one empty paragraph.
    pub fn to_adf(&self) -> Value {
        let mut content = Vec::new();
        for block in &self.blocks {
            match block {
                Block::Paragraph(text) => {
                    let text = clean(text);
                    let mut inline = Vec::new();
                    for (i, line) in text.split('\n').enumerate() {
                        if i > 0 {
                            inline.push(json!({"type": "hardBreak"}));
                        }
                        if !line.is_empty() {
                            inline.push(json!({"type": "text", "text": line}));
                        }
                    }
                    if inline.iter().any(|n| n["type"] == "text") {
                        content.push(json!({"type": "paragraph", "content": inline}));
                    }
                }
                Block::Code { language, text } => {
                    let text = clean(text);
                    let mut node = json!({"type": "codeBlock", "attrs": {"language": language.as_deref().unwrap_or("text")}});
                    if !text.is_empty() {
                        node["content"] = json!([{"type": "text", "text": text}]);
                    }
                    content.push(node);
                }
            }
        }
        if content.is_empty() {
            content.push(json!({"type": "paragraph", "content": []}));
        }
        json!({"type": "doc", "version": 1, "content": content})
    }

    /// Wiki markup for Data Center: paragraphs as text, code in `{code}` or `{noformat}`.
    pub fn to_wiki(&self) -> String {
        let mut parts = Vec::new();
        for block in &self.blocks {
            match block {
                Block::Paragraph(text) => parts.push(clean(text)),
                Block::Code { language, text } => {
                    let text = clean(text);
                    // A literal closing tag inside would end the block early.
                    let text = text
                        .replace("{code}", "{ code}")
                        .replace("{noformat}", "{ noformat}");
                    match language.as_deref() {
                        Some(lang)
                            if lang
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+') =>
                        {
                            parts.push(format!("{{code:{lang}}}\n{text}\n{{code}}"))
                        }
                        _ => parts.push(format!("{{noformat}}\n{text}\n{{noformat}}")),
                    }
                }
            }
        }
        parts.join("\n\n")
    }

    /// Text length in UTF-16 units (how Jira counts).
    pub fn text_len(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| match b {
                Block::Paragraph(t) | Block::Code { text: t, .. } => utf16_len(t) + 2,
            })
            .sum()
    }

    /// Cuts the document so that its text fits `budget` UTF-16 units, ending
    /// with a visible marker paragraph. Returns `self` unchanged when it fits.
    pub fn truncated(mut self, budget: usize) -> Doc {
        if self.text_len() <= budget {
            return self;
        }
        let total = self.text_len();
        let marker = truncation_marker(total);
        let mut left = budget.saturating_sub(utf16_len(&marker) + 2);
        let mut kept = Vec::new();
        for block in self.blocks.drain(..) {
            if left <= 2 {
                break;
            }
            let (text, rebuild): (&str, Box<dyn Fn(String) -> Block>) = match &block {
                Block::Paragraph(t) => (t.as_str(), Box::new(Block::Paragraph)),
                Block::Code { language, text } => {
                    let language = language.clone();
                    (
                        text.as_str(),
                        Box::new(move |t| Block::Code {
                            language: language.clone(),
                            text: t,
                        }),
                    )
                }
            };
            let need = utf16_len(text) + 2;
            if need <= left {
                left -= need;
                kept.push(block);
            } else {
                let cut = cut_utf16(text, left - 2);
                if !cut.is_empty() {
                    kept.push(rebuild(cut.to_string()));
                }
                left = 0;
            }
        }
        kept.push(Block::Paragraph(marker));
        Doc { blocks: kept }
    }
}

/// The marker appended to a cut comment.
pub fn truncation_marker(original_len: usize) -> String {
    format!("[… comment truncated by recac: the full text had {original_len} characters]")
}

/// Length as Jira counts it (UTF-16 code units).
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// The longest prefix of `text` within `max_units` UTF-16 units, ending on a
/// character boundary (never splits a surrogate pair or a UTF-8 sequence).
pub fn cut_utf16(text: &str, max_units: usize) -> &str {
    let mut units = 0;
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > max_units {
            return &text[..i];
        }
    }
    text
}

/// Cuts plain text to `budget` UTF-16 units including a visible marker.
pub fn truncate_text(text: &str, budget: usize) -> String {
    let len = utf16_len(text);
    if len <= budget {
        return text.to_string();
    }
    let marker = truncation_marker(len);
    let keep = budget.saturating_sub(utf16_len(&marker) + 2);
    format!("{}\n\n{marker}", cut_utf16(text, keep))
}

/// Plain text of an ADF node (or of a string body): text nodes joined,
/// paragraphs and hard breaks as newlines, a mention as its `attrs.text`
/// (`@Display Name`). Used to look for markers and commands.
pub fn plain_text(body: &Value) -> String {
    fn walk(node: &Value, out: &mut String) {
        match node {
            Value::String(s) => out.push_str(s),
            Value::Object(map) => {
                match map.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = map.get("text").and_then(Value::as_str) {
                            out.push_str(t);
                        }
                    }
                    Some("hardBreak") => out.push('\n'),
                    Some("mention") => {
                        if let Some(t) = map
                            .get("attrs")
                            .and_then(|a| a.get("text"))
                            .and_then(Value::as_str)
                        {
                            out.push_str(t);
                        }
                    }
                    _ => {}
                }
                if let Some(Value::Array(children)) = map.get("content") {
                    for child in children {
                        walk(child, out);
                    }
                    if matches!(
                        map.get("type").and_then(Value::as_str),
                        Some("paragraph" | "codeBlock" | "heading")
                    ) {
                        out.push('\n');
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    walk(body, &mut out);
    out.trim_end().to_string()
}

/// The account ids of the ADF `mention` nodes anywhere in `body`, in order.
pub fn mentioned_account_ids(body: &Value) -> Vec<&str> {
    fn walk<'a>(node: &'a Value, out: &mut Vec<&'a str>) {
        match node {
            Value::Object(map) => {
                if map.get("type").and_then(Value::as_str) == Some("mention")
                    && let Some(id) = map
                        .get("attrs")
                        .and_then(|a| a.get("id"))
                        .and_then(Value::as_str)
                {
                    out.push(id);
                }
                if let Some(children) = map.get("content") {
                    walk(children, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(body, &mut out);
    out
}

/// The targets of the wiki-markup mentions `[~target]` in `text`, in order: a Data Center
/// user name (`[~jsmith]`) or, as Jira Cloud writes them, `accountid:<accountId>`.
pub fn wiki_mention_targets(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("[~") {
        let after = &rest[start + 2..];
        match after.find(['\n', ']']) {
            Some(end) if after[end..].starts_with(']') => {
                let target = after[..end].trim();
                if !target.is_empty() {
                    out.push(target);
                }
                rest = &after[end + 1..];
            }
            Some(end) => rest = &after[end..],
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_adf_shape() {
        let doc = Doc::new().paragraph("hello").code(None, "x = 1").to_adf();
        assert_eq!(
            doc,
            json!({"type":"doc","version":1,"content":[
                {"type":"paragraph","content":[{"type":"text","text":"hello"}]},
                {"type":"codeBlock","attrs":{"language":"text"},"content":[{"type":"text","text":"x = 1"}]}]})
        );
    }

    #[test]
    fn no_empty_text_nodes() {
        let doc = Doc::new()
            .paragraph("")
            .paragraph("a\n\nb")
            .code(Some("rust"), "")
            .to_adf();
        let s = doc.to_string();
        assert!(!s.contains(r#""text":"""#), "{s}");
        assert_eq!(plain_text(&doc), "a\n\nb");
        assert_eq!(Doc::new().to_adf()["content"][0]["type"], "paragraph");
    }

    #[test]
    fn from_text_fences() {
        let doc = Doc::from_text("Summary line\nsecond\n\n```diff\n+a\n-b\n```\ntail");
        assert_eq!(
            doc.blocks,
            vec![
                Block::Paragraph("Summary line\nsecond".into()),
                Block::Code {
                    language: Some("diff".into()),
                    text: "+a\n-b".into()
                },
                Block::Paragraph("tail".into()),
            ]
        );
        assert_eq!(
            doc.to_wiki(),
            "Summary line\nsecond\n\n{code:diff}\n+a\n-b\n{code}\n\ntail"
        );
    }

    #[test]
    fn truncation_keeps_under_limit_with_marker() {
        let long = "é😀x".repeat(20_000);
        let doc = Doc::new()
            .paragraph("head")
            .code(None, long.clone())
            .truncated(COMMENT_BUDGET);
        assert!(doc.text_len() <= COMMENT_BUDGET);
        let text = plain_text(&doc.to_adf());
        assert!(text.contains("comment truncated by recac"));
        assert!(utf16_len(&text) < JIRA_COMMENT_LIMIT);
        let t = truncate_text(&long, COMMENT_BUDGET);
        assert!(utf16_len(&t) <= COMMENT_BUDGET);
        assert!(t.ends_with("characters]"));
        assert_eq!(truncate_text("short", 10), "short");
    }

    #[test]
    fn plain_text_shows_mentions_by_their_text() {
        let body = json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
            {"type": "mention", "attrs": {"id": "5b10ac8d82e05b22cc7d4ef5", "text": "@recac bot"}},
            {"type": "text", "text": " retry please"}]}]});
        assert_eq!(plain_text(&body), "@recac bot retry please");
        let without_text = json!({"type": "paragraph", "content": [
            {"type": "mention", "attrs": {"id": "5b10ac8d82e05b22cc7d4ef5"}},
            {"type": "text", "text": "hi"}]});
        assert_eq!(plain_text(&without_text), "hi");
    }

    #[test]
    fn finds_mentions_in_adf_and_wiki() {
        let body = json!({"type": "doc", "version": 1, "content": [
            {"type": "paragraph", "content": [
                {"type": "mention", "attrs": {"id": "a1", "text": "@A"}},
                {"type": "text", "text": " and "},
                {"type": "mention", "attrs": {"text": "@no id"}}]},
            {"type": "bulletList", "content": [{"type": "listItem", "content": [
                {"type": "paragraph", "content": [{"type": "mention", "attrs": {"id": "b2"}}]}]}]}]});
        assert_eq!(mentioned_account_ids(&body), vec!["a1", "b2"]);
        assert!(mentioned_account_ids(&json!("[~accountid:a1]")).is_empty());

        assert_eq!(
            wiki_mention_targets("[~accountid:a1] retry, cc [~jsmith] [~]"),
            vec!["accountid:a1", "jsmith"]
        );
        assert_eq!(
            wiki_mention_targets("[~broken\n[~ok] [~unclosed"),
            vec!["ok"]
        );
    }

    #[test]
    fn cut_respects_surrogates() {
        assert_eq!(cut_utf16("😀😀", 3), "😀");
        assert_eq!(cut_utf16("ab", 5), "ab");
    }
}
