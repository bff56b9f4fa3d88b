//! A comment as structured blocks, rendered as ADF (Cloud) or wiki markup (Data Center), and
//! the hidden marker that identifies it.

use serde_json::{Value, json};

/// Where the marker's link points; the fragment carries what the comment reports.
pub const MARKER_BASE: &str = "https://github.com/recac-io/recac#recac-feedback";

/// Jira's limit is 32,767 characters; this leaves room for the markup around the text.
pub const TEXT_BUDGET: usize = 30_000;

/// A run of text inside a paragraph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inline {
    Text(String),
    Strong(String),
    /// Monospaced text.
    Code(String),
    Link {
        text: String,
        href: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    Paragraph(Vec<Inline>),
    /// One paragraph per item.
    Bullets(Vec<Vec<Inline>>),
    /// Preformatted text, shown as is.
    CodeBlock(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comment {
    pub blocks: Vec<Block>,
}

/// The marker of one report on one task: a link target readers do not see.
pub fn marker(task_uid: &str, report_key: &str) -> String {
    // The report key is `<kind>/<attempt>`; the attempt comes last, so `/1` never matches `/10`
    // once the closing delimiter of the link is included in the search (see [`has_marker`]).
    format!("{MARKER_BASE}/{task_uid}/{report_key}")
}

/// Whether a comment body (ADF or wiki text, as Jira returns it) carries `marker`.
pub fn has_marker(body: &Value, marker: &str) -> bool {
    match body {
        // ADF: the link's href is a whole JSON string.
        Value::Object(_) | Value::Array(_) => body.to_string().contains(&format!("\"{marker}\"")),
        // Wiki: `[text|href]`.
        Value::String(text) => text.contains(&format!("|{marker}]")),
        _ => false,
    }
}

fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

impl Inline {
    fn text(&self) -> &str {
        match self {
            Inline::Text(t) | Inline::Strong(t) | Inline::Code(t) => t,
            Inline::Link { text, .. } => text,
        }
    }

    fn to_adf(&self) -> Option<Value> {
        let text = clean(self.text());
        if text.is_empty() {
            return None;
        }
        let mut node = json!({"type": "text", "text": text});
        match self {
            Inline::Text(_) => {}
            Inline::Strong(_) => node["marks"] = json!([{"type": "strong"}]),
            Inline::Code(_) => node["marks"] = json!([{"type": "code"}]),
            Inline::Link { href, .. } => {
                node["marks"] = json!([{"type": "link", "attrs": {"href": href}}])
            }
        }
        Some(node)
    }

    fn to_wiki(&self) -> String {
        match self {
            Inline::Text(t) => escape_wiki(t),
            Inline::Strong(t) => format!("*{}*", escape_wiki(t)),
            Inline::Code(t) => format!("{{{{{}}}}}", escape_wiki(t)),
            Inline::Link { text, href } => {
                let href = href.replace('|', "%7C").replace(']', "%5D");
                format!("[{}|{href}]", escape_wiki(text))
            }
        }
    }
}

/// Text that wiki markup shows literally.
fn escape_wiki(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in clean(text).chars() {
        if matches!(c, '\\' | '*' | '_' | '{' | '}' | '[' | ']' | '!' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Preformatted text with every `{noformat` (in any case) spaced out: a literal closing tag
/// inside would end the block early, and what follows it would be read as markup.
fn defuse_noformat(text: &str) -> String {
    // ASCII lowercasing keeps every byte where it was.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for (at, _) in lower.match_indices("{noformat") {
        out.push_str(&text[from..at]);
        out.push_str("{ ");
        from = at + 1;
    }
    out.push_str(&text[from..]);
    out
}

fn paragraph_adf(inlines: &[Inline]) -> Option<Value> {
    let mut content = Vec::new();
    for inline in inlines {
        // Line breaks inside text become hard breaks.
        let text = inline.text();
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                content.push(json!({"type": "hardBreak"}));
            }
            let piece = match inline {
                Inline::Text(_) => Inline::Text(line.into()),
                Inline::Strong(_) => Inline::Strong(line.into()),
                Inline::Code(_) => Inline::Code(line.into()),
                Inline::Link { href, .. } => Inline::Link {
                    text: line.into(),
                    href: href.clone(),
                },
            };
            content.extend(piece.to_adf());
        }
    }
    content
        .iter()
        .any(|n| n["type"] == "text")
        .then(|| json!({"type": "paragraph", "content": content}))
}

impl Comment {
    pub fn paragraph(&mut self, inlines: Vec<Inline>) {
        self.blocks.push(Block::Paragraph(inlines));
    }

    /// Atlassian Document Format (Jira Cloud, REST v3).
    pub fn to_adf(&self) -> Value {
        let mut content = Vec::new();
        for block in &self.blocks {
            match block {
                Block::Paragraph(inlines) => content.extend(paragraph_adf(inlines)),
                Block::Bullets(items) => {
                    let items: Vec<Value> = items
                        .iter()
                        .filter_map(|item| paragraph_adf(item))
                        .map(|p| json!({"type": "listItem", "content": [p]}))
                        .collect();
                    if !items.is_empty() {
                        content.push(json!({"type": "bulletList", "content": items}));
                    }
                }
                Block::CodeBlock(text) => {
                    let text = clean(text);
                    let mut node = json!({"type": "codeBlock", "attrs": {"language": "text"}});
                    if !text.is_empty() {
                        node["content"] = json!([{"type": "text", "text": text}]);
                    }
                    content.push(node);
                }
            }
        }
        json!({"type": "doc", "version": 1, "content": content})
    }

    /// Wiki markup (Jira Data Center, REST v2).
    pub fn to_wiki(&self) -> String {
        let inline = |inlines: &[Inline]| -> String {
            inlines.iter().map(Inline::to_wiki).collect::<String>()
        };
        let mut parts = Vec::new();
        for block in &self.blocks {
            match block {
                Block::Paragraph(inlines) => parts.push(inline(inlines)),
                Block::Bullets(items) => parts.push(
                    items
                        .iter()
                        .map(|item| format!("* {}", inline(item).replace('\n', " ")))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                Block::CodeBlock(text) => {
                    let text = defuse_noformat(&clean(text));
                    parts.push(format!("{{noformat}}\n{text}\n{{noformat}}"));
                }
            }
        }
        parts.join("\n\n")
    }

    /// Characters of text, as Jira counts them (UTF-16 units), without markup.
    pub fn text_len(&self) -> usize {
        let units = |s: &str| s.encode_utf16().count();
        self.blocks
            .iter()
            .map(|block| match block {
                Block::Paragraph(inlines) => {
                    inlines.iter().map(|i| units(i.text())).sum::<usize>() + 2
                }
                Block::Bullets(items) => items
                    .iter()
                    .map(|item| item.iter().map(|i| units(i.text())).sum::<usize>() + 3)
                    .sum(),
                Block::CodeBlock(text) => units(text) + 24,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Comment {
        let mut c = Comment::default();
        c.paragraph(vec![
            Inline::Strong("recac".into()),
            Inline::Text(" finished [ok] *now*\nsecond line".into()),
        ]);
        c.blocks.push(Block::Bullets(vec![
            vec![
                Inline::Text("Pull request: ".into()),
                Inline::Link {
                    text: "PR #4".into(),
                    href: "https://g.example/pull/4".into(),
                },
            ],
            vec![Inline::Code("recac/OPS-1".into())],
        ]));
        c.blocks.push(Block::CodeBlock(
            "line {noformat}\n{NoFormat:title=x} end".into(),
        ));
        c.paragraph(vec![Inline::Link {
            text: "recac".into(),
            href: marker("u-1", "failed/1"),
        }]);
        c
    }

    #[test]
    fn adf_has_real_links_code_and_no_empty_text() {
        let adf = sample().to_adf();
        let s = adf.to_string();
        assert!(!s.contains(r#""text":"""#), "{s}");
        assert_eq!(adf["content"][0]["content"][2]["type"], "hardBreak");
        assert_eq!(
            adf["content"][1]["content"][0]["content"][0]["content"][1]["marks"][0]["attrs"]["href"],
            "https://g.example/pull/4"
        );
        assert_eq!(adf["content"][2]["type"], "codeBlock");
        assert!(has_marker(&adf, &marker("u-1", "failed/1")));
        assert!(!has_marker(&adf, &marker("u-1", "failed/10")));
        assert!(!has_marker(&adf, &marker("u-1", "failed/")));
    }

    #[test]
    fn wiki_escapes_text_and_keeps_links() {
        let wiki = sample().to_wiki();
        assert!(
            wiki.starts_with("*recac* finished \\[ok\\] \\*now\\*\nsecond line"),
            "{wiki}"
        );
        assert!(
            wiki.contains("* Pull request: [PR #4|https://g.example/pull/4]"),
            "{wiki}"
        );
        assert!(wiki.contains("{{recac/OPS-1}}"), "{wiki}");
        assert!(
            wiki.contains("{noformat}\nline { noformat}\n{ NoFormat:title=x} end\n{noformat}"),
            "{wiki}"
        );
        let body = Value::String(wiki);
        assert!(has_marker(&body, &marker("u-1", "failed/1")));
        assert!(!has_marker(&body, &marker("u-1", "failed/10")));
    }
}
