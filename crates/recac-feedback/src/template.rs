//! Headline templates: text with `{placeholder}`s from a small fixed set.

use std::collections::BTreeMap;

/// Every placeholder a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "task",
    "namespace",
    "ticket",
    "attempt",
    "attempts",
    "outcome",
    "reason",
    "branch",
    "pullRequest",
    "duration",
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Placeholder(String),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Part>);

/// Why a template cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}}; known: {known}", known = PLACEHOLDERS.join(", "))]
    Unknown(String),
    #[error("a `{{` is not closed by `}}`")]
    Unclosed,
}

impl Template {
    /// Parses `text`; `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(TemplateError::Unclosed),
                        }
                    }
                    let name = name.trim().to_string();
                    if !PLACEHOLDERS.contains(&name.as_str()) {
                        return Err(TemplateError::Unknown(name));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Placeholder(name));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template(parts))
    }

    /// The text with each placeholder replaced by its value (empty when it has none).
    pub fn render(&self, values: &BTreeMap<&'static str, String>) -> String {
        self.0
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.clone(),
                Part::Placeholder(name) => values.get(name.as_str()).cloned().unwrap_or_default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_braces_escaped() {
        let t = Template::parse("{ticket}: {{done}} in {attempts} attempts").expect("parses");
        let values = BTreeMap::from([("ticket", "OPS-1".to_string()), ("attempts", "2".into())]);
        assert_eq!(t.render(&values), "OPS-1: {done} in 2 attempts");
        assert_eq!(
            Template::parse("x {branch}")
                .expect("parses")
                .render(&BTreeMap::new()),
            "x "
        );
    }

    #[test]
    fn unknown_and_unclosed_are_errors() {
        assert_eq!(
            Template::parse("{nope}"),
            Err(TemplateError::Unknown("nope".into()))
        );
        assert!(
            TemplateError::Unknown("x".into())
                .to_string()
                .contains("pullRequest")
        );
        assert_eq!(Template::parse("{task"), Err(TemplateError::Unclosed));
    }
}
