//! Branch names made from text people wrote (ticket keys, prompts, task names): one rule
//! for the operator, which decides the branch, and the agent, which pushes it.

/// Longest branch name recac makes.
const MAX_LEN: usize = 100;

/// A name git accepts as a branch (`git check-ref-format --branch`), derived from `raw`:
/// characters outside `[A-Za-z0-9._/-]` become `-`, runs of separators collapse, components
/// never start with `.` or end with `.lock`, and the name never starts with `-`.
pub fn sanitize_branch(raw: &str) -> String {
    let mut mapped = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-') {
            mapped.push(c);
        } else {
            mapped.push('-');
        }
    }
    let mut components = Vec::new();
    for part in mapped.split('/') {
        let mut part = part.to_string();
        while part.contains("..") {
            part = part.replace("..", ".");
        }
        while part.contains("--") {
            part = part.replace("--", "-");
        }
        let mut part = part.trim_matches(|c| c == '.' || c == '-').to_string();
        while part.ends_with(".lock") {
            part.truncate(part.len() - ".lock".len());
            part = part.trim_end_matches(['.', '-']).to_string();
        }
        if !part.is_empty() {
            components.push(part);
        }
    }
    let mut name = components.join("/");
    if name.len() > MAX_LEN {
        name.truncate(MAX_LEN);
        name = name.trim_end_matches(['.', '-', '/']).to_string();
    }
    if name.is_empty() || name == "HEAD" || name == "@" {
        "recac/work".to_string()
    } else {
        name
    }
}
