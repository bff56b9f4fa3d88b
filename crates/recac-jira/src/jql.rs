//! Building JQL safely from configuration values.
//!
//! Every value goes through [`quote`]: it is always wrapped in double quotes
//! with `"` and `\` escaped and control characters written as escapes, so a
//! value can never end the string early, inject a clause, or be read as a
//! reserved word or a function.

/// Words JQL reserves; unquoted they are a syntax error.
pub const RESERVED_WORDS: &[&str] = &[
    "a",
    "abort",
    "access",
    "add",
    "after",
    "alias",
    "all",
    "alter",
    "an",
    "and",
    "any",
    "are",
    "as",
    "asc",
    "at",
    "audit",
    "avg",
    "before",
    "begin",
    "between",
    "boolean",
    "break",
    "by",
    "byte",
    "catch",
    "cf",
    "char",
    "character",
    "check",
    "checkpoint",
    "collate",
    "collation",
    "column",
    "commit",
    "connect",
    "continue",
    "count",
    "create",
    "current",
    "date",
    "decimal",
    "declare",
    "decrement",
    "default",
    "defaults",
    "define",
    "delete",
    "delimiter",
    "desc",
    "difference",
    "distinct",
    "divide",
    "do",
    "double",
    "drop",
    "else",
    "empty",
    "encoding",
    "end",
    "equals",
    "escape",
    "exclusive",
    "exec",
    "execute",
    "exists",
    "explain",
    "false",
    "fetch",
    "field",
    "file",
    "first",
    "float",
    "for",
    "from",
    "function",
    "go",
    "goto",
    "grant",
    "greater",
    "group",
    "having",
    "identified",
    "if",
    "immediate",
    "in",
    "increment",
    "index",
    "initial",
    "inner",
    "inout",
    "input",
    "insert",
    "int",
    "integer",
    "intersect",
    "intersection",
    "into",
    "is",
    "isempty",
    "isnull",
    "join",
    "last",
    "left",
    "less",
    "like",
    "limit",
    "lock",
    "long",
    "max",
    "min",
    "minus",
    "mode",
    "modify",
    "modulo",
    "more",
    "multiply",
    "next",
    "noaudit",
    "not",
    "notin",
    "nowait",
    "null",
    "number",
    "object",
    "of",
    "on",
    "option",
    "or",
    "order",
    "outer",
    "output",
    "power",
    "previous",
    "prior",
    "privileges",
    "public",
    "raise",
    "raw",
    "remainder",
    "rename",
    "resource",
    "return",
    "returns",
    "revoke",
    "right",
    "row",
    "rowid",
    "rownum",
    "rows",
    "select",
    "session",
    "set",
    "share",
    "size",
    "sqrt",
    "start",
    "strict",
    "string",
    "subtract",
    "sum",
    "synonym",
    "table",
    "then",
    "to",
    "trans",
    "transaction",
    "trigger",
    "true",
    "uid",
    "union",
    "unique",
    "update",
    "user",
    "validate",
    "values",
    "view",
    "when",
    "whenever",
    "where",
    "while",
    "with",
];

/// Whether `word` is a JQL reserved word (case-insensitive).
pub fn is_reserved(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    RESERVED_WORDS.binary_search(&lower.as_str()).is_ok()
}

/// Quotes a value as a JQL string literal: `a "b" \c` → `"a \"b\" \\c"`.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reverses [`quote`]: the value of a JQL string literal (with its quotes).
/// `None` if `literal` is not a single well-formed quoted string.
pub fn unquote(literal: &str) -> Option<String> {
    let quote_char = literal.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = literal.strip_prefix(quote_char)?.strip_suffix(quote_char)?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c if c == quote_char => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// A field name for a clause: bare when it is a plain identifier (or
/// `cf[12345]`), quoted otherwise (custom field names with spaces, reserved words).
pub fn field(name: &str) -> String {
    let plain = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !is_reserved(name);
    let custom = name
        .strip_prefix("cf[")
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if plain || custom {
        name.to_string()
    } else {
        quote(name)
    }
}

/// `field = "value"`.
pub fn eq(name: &str, value: &str) -> String {
    format!("{} = {}", field(name), quote(value))
}

/// `field != "value"`.
pub fn not_eq(name: &str, value: &str) -> String {
    format!("{} != {}", field(name), quote(value))
}

/// `field IN ("a", "b")`; an empty list yields a clause that matches nothing
/// is not expressible in JQL, so it is refused with `None`.
pub fn in_list<S: AsRef<str>>(name: &str, values: &[S]) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let list: Vec<String> = values.iter().map(|v| quote(v.as_ref())).collect();
    Some(format!("{} IN ({})", field(name), list.join(", ")))
}

/// `field NOT IN ("a", "b")`, `None` for an empty list.
pub fn not_in_list<S: AsRef<str>>(name: &str, values: &[S]) -> Option<String> {
    in_list(name, values).map(|c| c.replacen(" IN (", " NOT IN (", 1))
}

/// Joins clauses with `AND`, each in parentheses.
pub fn and<S: AsRef<str>>(clauses: &[S]) -> String {
    join(clauses, "AND")
}

/// Joins clauses with `OR`, each in parentheses.
pub fn or<S: AsRef<str>>(clauses: &[S]) -> String {
    join(clauses, "OR")
}

fn join<S: AsRef<str>>(clauses: &[S], op: &str) -> String {
    let parts: Vec<&str> = clauses
        .iter()
        .map(|c| c.as_ref().trim())
        .filter(|c| !c.is_empty())
        .collect();
    if parts.len() == 1 {
        return parts[0].to_string();
    }
    let wrapped: Vec<String> = parts.iter().map(|c| format!("({c})")).collect();
    wrapped.join(&format!(" {op} "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_list_sorted() {
        let mut sorted = RESERVED_WORDS.to_vec();
        sorted.sort();
        assert_eq!(sorted, RESERVED_WORDS);
        assert!(is_reserved("ORDER"));
        assert!(is_reserved("empty"));
        assert!(!is_reserved("labels"));
    }

    #[test]
    fn quotes_and_backslashes() {
        assert_eq!(quote("recac-agent"), r#""recac-agent""#);
        assert_eq!(quote(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(quote(r"C:\dir\"), r#""C:\\dir\\""#);
        assert_eq!(quote("a\nb\tc\u{1}"), r#""a\nb\tc\u0001""#);
        assert_eq!(quote(""), r#""""#);
        // A classic injection attempt stays one literal.
        let evil = r#"x" OR project = "SECRET"#;
        assert_eq!(quote(evil), r#""x\" OR project = \"SECRET""#);
        assert_eq!(unquote(&quote(evil)).as_deref(), Some(evil));
    }

    #[test]
    fn reserved_words_and_functions_are_quoted() {
        assert_eq!(eq("status", "Done"), r#"status = "Done""#);
        assert_eq!(eq("labels", "empty"), r#"labels = "empty""#);
        assert_eq!(
            eq("assignee", "currentUser()"),
            r#"assignee = "currentUser()""#
        );
        assert_eq!(eq("order", "x"), r#""order" = "x""#);
        assert_eq!(field("Story Points"), r#""Story Points""#);
        assert_eq!(field("cf[10010]"), "cf[10010]");
        assert_eq!(field("cf[x]"), r#""cf[x]""#);
    }

    #[test]
    fn lists_and_joins() {
        assert_eq!(
            in_list("status", &["To Do", "Open"]).unwrap(),
            r#"status IN ("To Do", "Open")"#
        );
        assert_eq!(
            not_in_list("labels", &["a"]).unwrap(),
            r#"labels NOT IN ("a")"#
        );
        assert_eq!(in_list::<&str>("labels", &[]), None);
        assert_eq!(
            and(&[eq("project", "OPS"), eq("labels", "bot")]),
            r#"(project = "OPS") AND (labels = "bot")"#
        );
        assert_eq!(
            and(&[eq("project", "OPS"), String::new()]),
            r#"project = "OPS""#
        );
        assert_eq!(not_eq("status", "Done"), r#"status != "Done""#);
        assert_eq!(or(&["a = 1", "b = 2"]), "(a = 1) OR (b = 2)");
    }

    #[test]
    fn unquote_rejects_bad_literals() {
        assert_eq!(unquote(r#""a"b""#), None);
        assert_eq!(unquote("abc"), None);
        assert_eq!(unquote(r#""a\""#), None);
        assert_eq!(unquote("'it'").as_deref(), Some("it"));
    }
}
