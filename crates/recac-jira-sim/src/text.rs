//! Rich text: wiki/plain text (REST v2) and Atlassian Document Format (REST v3).
//!
//! Jira Cloud stores one document and renders it per API version, so a
//! comment posted as text on v2 reads as ADF on v3 and the other way round.

use serde_json::{Value, json};

/// How Jira Cloud writes a mention in wiki markup: `[~accountid:<accountId>]`.
const CLOUD_MENTION_OPEN: &str = "[~accountid:";

/// An ADF mention of `account_id`; `attrs.text` is `@<display name>` when the user is known.
fn mention_node(account_id: &str, display_name: Option<&str>) -> Value {
    let mut attrs = json!({"id": account_id});
    if let Some(name) = display_name {
        attrs["text"] = json!(format!("@{name}"));
    }
    json!({"type": "mention", "attrs": attrs})
}

/// One line of wiki text as ADF inline nodes: text, and a mention node for each
/// `[~accountid:<accountId>]`.
fn inline_nodes(line: &str, display_name: &dyn Fn(&str) -> Option<String>) -> Vec<Value> {
    let mut nodes = Vec::new();
    let mut text = String::new();
    let mut rest = line;
    while let Some(start) = rest.find(CLOUD_MENTION_OPEN) {
        let after = &rest[start + CLOUD_MENTION_OPEN.len()..];
        let id_end = after.find(']').filter(|&end| {
            end > 0 && !after[..end].contains(|c: char| c.is_whitespace() || c == '[')
        });
        let Some(end) = id_end else {
            text.push_str(&rest[..start + CLOUD_MENTION_OPEN.len()]);
            rest = after;
            continue;
        };
        text.push_str(&rest[..start]);
        if !text.is_empty() {
            nodes.push(json!({"type": "text", "text": std::mem::take(&mut text)}));
        }
        let id = &after[..end];
        nodes.push(mention_node(id, display_name(id).as_deref()));
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        nodes.push(json!({"type": "text", "text": text}));
    }
    nodes
}

/// Plain or wiki text as an ADF document: blank lines separate paragraphs,
/// single newlines become hard breaks, `{code[:lang]}` … `{code}` blocks
/// become code blocks, `[~accountid:<id>]` becomes a mention (its text from
/// `display_name`, as Jira Cloud fills it from the user's profile).
pub(crate) fn adf_from_text(text: &str, display_name: &dyn Fn(&str) -> Option<String>) -> Value {
    let mut blocks: Vec<Value> = Vec::new();
    let mut para: Vec<&str> = Vec::new();
    // (language, opening line, body lines) of an open `{code}` block.
    let mut code: Option<(String, &str, Vec<&str>)> = None;
    let flush = |para: &mut Vec<&str>, blocks: &mut Vec<Value>| {
        if para.is_empty() {
            return;
        }
        let mut content = Vec::new();
        for (i, line) in para.iter().enumerate() {
            if i > 0 {
                content.push(json!({"type": "hardBreak"}));
            }
            content.extend(inline_nodes(line, display_name));
        }
        blocks.push(json!({"type": "paragraph", "content": content}));
        para.clear();
    };
    for line in text.lines() {
        if let Some((lang, _, lines)) = code.as_mut() {
            if line.trim() == "{code}" {
                let body = lines.join("\n");
                let content = if body.is_empty() {
                    json!([])
                } else {
                    json!([{"type": "text", "text": body}])
                };
                let mut block = json!({"type": "codeBlock", "content": content});
                if !lang.is_empty() {
                    block["attrs"] = json!({"language": lang});
                }
                blocks.push(block);
                code = None;
            } else {
                lines.push(line);
            }
            continue;
        }
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("{code")
            && let Some(spec) = rest.strip_suffix('}')
            && (spec.is_empty() || spec.starts_with(':'))
        {
            flush(&mut para, &mut blocks);
            let lang = spec.trim_start_matches(':').split('|').next().unwrap_or("");
            code = Some((lang.to_string(), line, Vec::new()));
        } else if trimmed.is_empty() {
            flush(&mut para, &mut blocks);
        } else {
            para.push(line);
        }
    }
    if let Some((_, opening, lines)) = code {
        // An unterminated block stays text.
        para.push(opening);
        para.extend(lines);
    }
    flush(&mut para, &mut blocks);
    json!({"type": "doc", "version": 1, "content": blocks})
}

/// An ADF document as wiki text: the inverse of [`adf_from_text`] for what
/// it produces, and a readable rendering of other common nodes.
pub(crate) fn adf_to_text(doc: &Value) -> String {
    fn inline(node: &Value, out: &mut String) {
        let attr = |k: &str| {
            node.get("attrs")
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match node.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" => out.push_str(node.get("text").and_then(Value::as_str).unwrap_or("")),
            "hardBreak" => out.push('\n'),
            // Jira Cloud's v2 (wiki) rendering of a mention.
            "mention" => match attr("id") {
                id if !id.is_empty() => out.push_str(&format!("{CLOUD_MENTION_OPEN}{id}]")),
                _ => out.push_str(&attr("text")),
            },
            "emoji" => out.push_str(&attr("shortName")),
            "inlineCard" => out.push_str(&attr("url")),
            _ => children(node).iter().for_each(|c| inline(c, out)),
        }
    }
    fn children(node: &Value) -> &[Value] {
        node.get("content")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    fn block(node: &Value, prefix: &str) -> String {
        let mut text = String::new();
        match node.get("type").and_then(Value::as_str).unwrap_or("") {
            "codeBlock" => {
                let lang = node
                    .get("attrs")
                    .and_then(|a| a.get("language"))
                    .and_then(Value::as_str)
                    .filter(|l| !l.is_empty());
                let mut body = String::new();
                children(node).iter().for_each(|c| inline(c, &mut body));
                text = match lang {
                    Some(l) => format!("{{code:{l}}}\n{body}\n{{code}}"),
                    None => format!("{{code}}\n{body}\n{{code}}"),
                };
            }
            "heading" => {
                let level = node
                    .get("attrs")
                    .and_then(|a| a.get("level"))
                    .and_then(Value::as_u64)
                    .unwrap_or(1);
                let mut body = String::new();
                children(node).iter().for_each(|c| inline(c, &mut body));
                text = format!("h{level}. {body}");
            }
            "bulletList" | "orderedList" => {
                let mark = if node.get("type").and_then(Value::as_str) == Some("bulletList") {
                    format!("{prefix}*")
                } else {
                    format!("{prefix}#")
                };
                let items: Vec<String> = children(node)
                    .iter()
                    .map(|item| {
                        let parts: Vec<String> =
                            children(item).iter().map(|b| block(b, &mark)).collect();
                        format!("{mark} {}", parts.join("\n"))
                    })
                    .collect();
                text = items.join("\n");
            }
            "rule" => text.push_str("----"),
            "paragraph" | "text" | "hardBreak" | "mention" | "emoji" | "inlineCard" => {
                inline(node, &mut text)
            }
            _ => {
                let parts: Vec<String> = children(node).iter().map(|b| block(b, prefix)).collect();
                text = parts.join("\n\n");
            }
        }
        text
    }
    match doc {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        _ => block(doc, ""),
    }
}

/// Validates an ADF document; returns the text length in UTF-16 units.
pub(crate) fn check_adf(doc: &Value) -> Result<usize, String> {
    fn walk(node: &Value, len: &mut usize) -> Result<(), String> {
        let obj = node.as_object().ok_or("ADF node must be an object")?;
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or("ADF node without type")?;
        if ty == "text" {
            let t = obj
                .get("text")
                .and_then(Value::as_str)
                .ok_or("text node without text")?;
            if t.is_empty() {
                return Err("INVALID_INPUT: text nodes must not be empty".into());
            }
            *len += t.encode_utf16().count();
        }
        if ty == "mention" {
            // A comment that only mentions someone is not empty.
            let shown = obj
                .get("attrs")
                .and_then(|a| a.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("@");
            *len += shown.encode_utf16().count().max(1);
        }
        if let Some(c) = obj.get("content") {
            for child in c.as_array().ok_or("content must be an array")? {
                walk(child, len)?;
            }
        }
        Ok(())
    }
    if doc.get("type").and_then(Value::as_str) != Some("doc")
        || doc.get("version").and_then(Value::as_i64) != Some(1)
    {
        return Err(
            "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
                .into(),
        );
    }
    let mut len = 0;
    walk(doc, &mut len)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_through_adf() {
        for text in [
            "one",
            "para one\n\npara two",
            "line one\nline two\n\n{code:rust}\nfn main() {}\n{code}\n\nafter",
            "{code}\nx\n{code}",
        ] {
            let doc = adf_from_text(text, &|_| None);
            assert!(check_adf(&doc).is_ok(), "{doc}");
            assert_eq!(adf_to_text(&doc), text);
        }
        let doc = adf_from_text("a\n\n{code}\nx", &|_| None);
        assert_eq!(adf_to_text(&doc), "a\n\n{code}\nx");
    }

    #[test]
    fn renders_other_nodes() {
        let doc = json!({"type": "doc", "version": 1, "content": [
            {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "Title"}]},
            {"type": "bulletList", "content": [
                {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "a"}]}]},
                {"type": "listItem", "content": [{"type": "paragraph", "content": [
                    {"type": "mention", "attrs": {"id": "1", "text": "@bot"}}]}]}]},
            {"type": "codeBlock", "content": [{"type": "text", "text": "x"}]}
        ]});
        assert_eq!(
            adf_to_text(&doc),
            "h2. Title\n\n* a\n* [~accountid:1]\n\n{code}\nx\n{code}"
        );
    }

    #[test]
    fn mentions_convert_both_ways() {
        let names = |id: &str| (id == "5b10").then(|| "recac bot".to_string());
        let doc = adf_from_text("[~accountid:5b10] retry [~accountid:77] now\nnext", &names);
        assert_eq!(
            doc["content"][0]["content"],
            json!([
                {"type": "mention", "attrs": {"id": "5b10", "text": "@recac bot"}},
                {"type": "text", "text": " retry "},
                {"type": "mention", "attrs": {"id": "77"}},
                {"type": "text", "text": " now"},
                {"type": "hardBreak"},
                {"type": "text", "text": "next"},
            ])
        );
        assert!(check_adf(&doc).is_ok());
        assert_eq!(
            check_adf(&adf_from_text("[~accountid:5b10]", &names)),
            Ok("@recac bot".len())
        );
        assert_eq!(
            adf_to_text(&doc),
            "[~accountid:5b10] retry [~accountid:77] now\nnext"
        );

        for literal in [
            "[~accountid:] x",
            "[~accountid:a b] x",
            "[~accountid:open",
            "[~jsmith] x",
        ] {
            let doc = adf_from_text(literal, &names);
            assert_eq!(
                doc["content"][0]["content"],
                json!([{"type": "text", "text": literal}]),
                "{literal}"
            );
        }
        let code = adf_from_text("{code}\n[~accountid:5b10]\n{code}", &names);
        assert_eq!(code["content"][0]["type"], "codeBlock");
    }
}
