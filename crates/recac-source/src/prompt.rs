//! The agent's prompt, built from the ticket's summary and description.
//!
//! Ticket text is data: it is turned into plain text (ADF flattened on Cloud, wiki text
//! kept as written on Data Center), stripped of control characters other than newlines
//! and tabs, and capped with a visible marker. It is only ever the prompt's content,
//! never a name, a path, a branch or a command.

use serde_json::Value;

/// The ticket's description as plain text.
pub fn description_text(description: Option<&Value>) -> String {
    match description {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(adf) => recac_jira::adf::plain_text(adf),
    }
}

/// Removes control characters (keeping `\n` and `\t`; `\r\n` becomes `\n`).
pub fn clean(text: &str) -> String {
    text.replace("\r\n", "\n")
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

/// The marker that ends a cut prompt.
pub fn truncation_marker(total_chars: usize) -> String {
    format!("\n\n[… ticket text truncated by recac: the full text had {total_chars} characters]")
}

/// The prompt: a header naming the ticket, then the description, at most `max_chars`
/// characters in all.
pub fn build(key: &str, url: &str, summary: &str, description: &str, max_chars: usize) -> String {
    let summary = clean(summary).replace('\n', " ");
    let text = format!(
        "Jira ticket {key}: {}\n{url}\n\n{}",
        summary.trim(),
        clean(description).trim()
    );
    let total = text.chars().count();
    if total <= max_chars {
        return text.trim_end().to_string();
    }
    let marker = truncation_marker(total);
    let keep = max_chars.saturating_sub(marker.chars().count());
    let mut cut: String = text.chars().take(keep).collect();
    cut.push_str(&marker);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adf_and_wiki_descriptions_become_text() {
        let adf = json!({"type":"doc","version":1,"content":[{"type":"paragraph","content":[{"type":"text","text":"Hello"}]}]});
        assert_eq!(description_text(Some(&adf)).trim(), "Hello");
        assert_eq!(description_text(Some(&json!("h1. Title"))), "h1. Title");
        assert_eq!(description_text(None), "");
    }

    #[test]
    fn hostile_text_stays_data_and_is_capped() {
        let desc = format!(
            "$(rm -rf /) `id` ../../etc\u{0}\u{1b}[31m\r\nnext\n{}",
            "x".repeat(1_000_000)
        );
        let p = build(
            "OPS-1",
            "https://j/browse/OPS-1",
            "a\nb\u{7}",
            &desc,
            10_000,
        );
        assert_eq!(p.chars().count(), 10_000);
        assert!(p.starts_with("Jira ticket OPS-1: a b\n"), "{}", &p[..40]);
        assert!(p.contains("$(rm -rf /) `id` ../../etc[31m\nnext"));
        assert!(!p.chars().any(|c| c.is_control() && c != '\n'));
        assert!(p.ends_with("characters]"));
        let short = build("OPS-1", "u", "s", "d", 10_000);
        assert_eq!(short, "Jira ticket OPS-1: s\nu\n\nd");
    }
}
