//! The JQL subset the simulator understands: `AND`, `OR`, `NOT`, parentheses,
//! `=`, `!=`, `<`, `<=`, `>`, `>=`, `~`, `!~`, `IN`, `NOT IN`, `IS [NOT] EMPTY|NULL`,
//! `ORDER BY`; fields project, key, labels, status, statusCategory, assignee,
//! created, updated, summary, description, text; `currentUser()` and `now()`.
//! Errors carry Jira's messages.

use std::cmp::Ordering;

use jiff::{SignedDuration, Timestamp, civil::Date, tz::TimeZone};

use crate::model::{Category, IssueRec, State, UserDef};

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    Op(&'static str),
    Word(String),
    Str(String),
}

fn lex(input: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '=' => {
                out.push(Tok::Op("="));
                i += 1
            }
            '~' => {
                out.push(Tok::Op("~"));
                i += 1
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Op("!="));
                i += 2
            }
            '!' if chars.get(i + 1) == Some(&'~') => {
                out.push(Tok::Op("!~"));
                i += 2
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                out.push(Tok::Op(match (c, eq) {
                    ('<', true) => "<=",
                    ('<', false) => "<",
                    (_, true) => ">=",
                    _ => ">",
                }));
                i += if eq { 2 } else { 1 };
            }
            '"' | '\'' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(format!(
                            "Error in the JQL Query: The quoted string '{s}' has not been completed. (line 1, character {})",
                            i + 1
                        ));
                    };
                    i += 1;
                    match c {
                        '\\' => {
                            let Some(&e) = chars.get(i) else {
                                return Err("Error in the JQL Query: Illegal escape sequence at end of input.".into());
                            };
                            i += 1;
                            match e {
                                'n' => s.push('\n'),
                                'r' => s.push('\r'),
                                't' => s.push('\t'),
                                '"' | '\'' | '\\' | ' ' => s.push(e),
                                'u' => {
                                    let hex: String = chars.iter().skip(i).take(4).collect();
                                    let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32).ok_or_else(|| {
                                        format!("Error in the JQL Query: The escape sequence '\\u{hex}' is invalid.")
                                    })?;
                                    s.push(ch);
                                    i += 4;
                                }
                                other => {
                                    return Err(format!(
                                        "Error in the JQL Query: The escape sequence '\\{other}' in the string '{s}' is illegal."
                                    ));
                                }
                            }
                        }
                        c if c == quote => break,
                        c => s.push(c),
                    }
                }
                out.push(Tok::Str(s));
            }
            _ => {
                let start = i;
                while i < chars.len() {
                    let c = chars[i];
                    if c.is_whitespace() || "()=,!~<>\"'".contains(c) {
                        break;
                    }
                    i += 1;
                }
                if start == i {
                    return Err(format!(
                        "Error in the JQL Query: The character '{c}' is a reserved JQL character."
                    ));
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

/// A value in a clause.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Value(String),
    /// `currentUser()`, `now()`…
    Function(String),
    Empty,
    List(Vec<Operand>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Clause {
        field: String,
        op: String,
        operand: Operand,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub filter: Option<Expr>,
    pub order: Vec<(String, bool)>,
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

fn kw(t: Option<&Tok>, word: &str) -> bool {
    matches!(t, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(word))
}

fn show(t: Option<&Tok>) -> String {
    match t {
        None => "<EOF>".into(),
        Some(Tok::LParen) => "(".into(),
        Some(Tok::RParen) => ")".into(),
        Some(Tok::Comma) => ",".into(),
        Some(Tok::Op(o)) => o.to_string(),
        Some(Tok::Word(w)) => w.clone(),
        Some(Tok::Str(s)) => format!("\"{s}\""),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn err(&self, expecting: &str) -> String {
        format!(
            "Error in the JQL Query: Expecting {expecting} but got '{}'. (token {})",
            show(self.peek()),
            self.pos + 1
        )
    }

    fn query(&mut self) -> Result<Query, String> {
        let filter = if self.peek().is_none() || kw(self.peek(), "order") {
            None
        } else {
            Some(self.or()?)
        };
        let mut order = Vec::new();
        if kw(self.peek(), "order") {
            self.pos += 1;
            if !kw(self.peek(), "by") {
                return Err(self.err("'by'"));
            }
            self.pos += 1;
            loop {
                let field = match self.next() {
                    Some(Tok::Word(w)) | Some(Tok::Str(w)) => w,
                    _ => {
                        self.pos -= 1;
                        return Err(self.err("a field name"));
                    }
                };
                let mut asc = true;
                if kw(self.peek(), "asc") {
                    self.pos += 1;
                } else if kw(self.peek(), "desc") {
                    asc = false;
                    self.pos += 1;
                }
                order.push((field, asc));
                if self.peek() == Some(&Tok::Comma) {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        if self.peek().is_some() {
            return Err(self.err("either 'OR' or 'AND'"));
        }
        Ok(Query { filter, order })
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while kw(self.peek(), "or") || self.peek() == Some(&Tok::Word("||".into())) {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.not()?;
        while kw(self.peek(), "and") || self.peek() == Some(&Tok::Word("&&".into())) {
            self.pos += 1;
            let right = self.not()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if kw(self.peek(), "not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            if self.next() != Some(Tok::RParen) {
                self.pos -= 1;
                return Err(self.err("')'"));
            }
            return Ok(e);
        }
        self.clause()
    }

    fn clause(&mut self) -> Result<Expr, String> {
        let field = match self.next() {
            Some(Tok::Word(w))
                if !["and", "or", "order", "in", "is"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                w
            }
            Some(Tok::Str(s)) => s,
            _ => {
                self.pos -= 1;
                return Err(self.err("a field name"));
            }
        };
        let op = match self.next() {
            Some(Tok::Op(o)) => o.to_string(),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("in") => "in".into(),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("is") => {
                if kw(self.peek(), "not") {
                    self.pos += 1;
                    "is not".into()
                } else {
                    "is".into()
                }
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("not") => {
                if kw(self.peek(), "in") {
                    self.pos += 1;
                    "not in".into()
                } else {
                    return Err(self.err("'IN'"));
                }
            }
            _ => {
                self.pos -= 1;
                return Err(self.err("operator"));
            }
        };
        let operand = if op == "in" || op == "not in" {
            if self.next() != Some(Tok::LParen) {
                self.pos -= 1;
                return Err(self.err("'('"));
            }
            let mut items = Vec::new();
            loop {
                items.push(self.value()?);
                match self.next() {
                    Some(Tok::Comma) => continue,
                    Some(Tok::RParen) => break,
                    _ => {
                        self.pos -= 1;
                        return Err(self.err("')'"));
                    }
                }
            }
            Operand::List(items)
        } else {
            let v = self.value()?;
            if (op == "is" || op == "is not") && v != Operand::Empty {
                return Err(format!(
                    "Error in the JQL Query: The operator '{}' only supports EMPTY or NULL.",
                    op.to_uppercase()
                ));
            }
            v
        };
        Ok(Expr::Clause { field, op, operand })
    }

    fn value(&mut self) -> Result<Operand, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Operand::Value(s)),
            Some(Tok::Word(w)) => {
                if w.eq_ignore_ascii_case("empty") || w.eq_ignore_ascii_case("null") {
                    return Ok(Operand::Empty);
                }
                if self.peek() == Some(&Tok::LParen) {
                    self.pos += 1;
                    // Arguments are accepted and ignored.
                    while !matches!(self.peek(), Some(Tok::RParen) | None) {
                        self.pos += 1;
                    }
                    if self.next() != Some(Tok::RParen) {
                        self.pos -= 1;
                        return Err(self.err("')'"));
                    }
                    return Ok(Operand::Function(w));
                }
                if is_reserved_value(&w) {
                    return Err(format!(
                        "Error in the JQL Query: '{w}' is a reserved JQL word. You must surround it in quotation marks to use it in a query."
                    ));
                }
                Ok(Operand::Value(w))
            }
            _ => {
                self.pos -= 1;
                Err(self.err("either a value, list or function"))
            }
        }
    }
}

fn is_reserved_value(w: &str) -> bool {
    const R: &[&str] = &[
        "and", "or", "not", "in", "is", "order", "by", "asc", "desc", "select", "from", "where",
        "null", "empty", "true", "false",
    ];
    R.iter().any(|r| r.eq_ignore_ascii_case(w))
}

/// Parses a JQL string.
pub fn parse(jql: &str) -> Result<Query, String> {
    let toks = lex(jql)?;
    Parser { toks, pos: 0 }.query()
}

const FIELDS: &[&str] = &[
    "project",
    "key",
    "issuekey",
    "id",
    "labels",
    "status",
    "statuscategory",
    "assignee",
    "created",
    "createddate",
    "updated",
    "updateddate",
    "summary",
    "description",
    "text",
];

fn canonical(field: &str) -> Option<&'static str> {
    let f = field.to_ascii_lowercase();
    FIELDS.iter().find(|x| **x == f).map(|x| match *x {
        "issuekey" | "id" => "key",
        "createddate" => "created",
        "updateddate" => "updated",
        other => other,
    })
}

fn unknown_field(field: &str) -> String {
    format!("Field '{field}' does not exist or you do not have permission to view it.")
}

fn bad_value(value: &str, field: &str) -> String {
    format!("The value '{value}' does not exist for the field '{field}'.")
}

fn unsupported(op: &str, field: &str) -> String {
    format!(
        "The operator '{}' is not supported by the '{field}' field.",
        op.to_uppercase()
    )
}

/// Parses a date value: `2024-01-31`, `2024/01/31`, `2024-01-31 10:00`, RFC 3339,
/// or a period relative to `now` as Jira writes them: `-7d`, `2w`, `-4h`, `-30m`,
/// `"-4w 2d"` (w weeks, d days, h hours, m minutes; a leading sign applies to all).
pub fn parse_date(text: &str, now: Timestamp) -> Option<Timestamp> {
    let t = text.trim();
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Some(ts);
    }
    let normalized = t.replace('/', "-");
    if normalized.contains(' ') || normalized.contains('T') {
        if let Ok(dt) = normalized
            .replace(' ', "T")
            .parse::<jiff::civil::DateTime>()
        {
            return dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
        }
    } else if let Ok(d) = normalized.parse::<Date>() {
        return d.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
    }
    let minutes = period_minutes(t)?;
    now.checked_add(SignedDuration::from_mins(minutes)).ok()
}

/// A Jira period (`-5m`, `2h`, `"-4w 2d"`) in minutes, negative for the past.
fn period_minutes(text: &str) -> Option<i64> {
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let mut total: i64 = 0;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let amount: i64 = rest[..digits].parse().ok()?;
        let mut after = rest[digits..].chars();
        let minutes_per_unit = match after.next()? {
            'w' => 7 * 24 * 60,
            'd' => 24 * 60,
            'h' => 60,
            'm' => 1,
            _ => return None,
        };
        total = total.checked_add(amount.checked_mul(minutes_per_unit)?)?;
        rest = after.as_str().trim_start();
        parts += 1;
    }
    (parts > 0).then_some(sign * total)
}

/// Checks fields, operators and values; returns Jira's 400 messages.
pub(crate) fn validate(q: &Query, state: &State) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if let Some(f) = &q.filter {
        check(f, state, &mut errors);
    }
    for (field, _) in &q.order {
        match canonical(field) {
            Some("text") | Some("labels") => {
                errors.push(format!("Field '{field}' does not support sorting."))
            }
            Some(_) => {}
            None => errors.push(format!("Not able to sort using field '{field}'.")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn values(op: &Operand) -> Vec<&Operand> {
    match op {
        Operand::List(items) => items.iter().collect(),
        other => vec![other],
    }
}

fn check(e: &Expr, state: &State, errors: &mut Vec<String>) {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            check(a, state, errors);
            check(b, state, errors);
        }
        Expr::Not(a) => check(a, state, errors),
        Expr::Clause { field, op, operand } => {
            let Some(f) = canonical(field) else {
                errors.push(unknown_field(field));
                return;
            };
            let ok_ops: &[&str] = match f {
                "summary" | "description" | "text" => &["~", "!~", "is", "is not"],
                "created" | "updated" => &[
                    "=", "!=", "<", "<=", ">", ">=", "in", "not in", "is", "is not",
                ],
                "key" => &[
                    "=", "!=", "in", "not in", "<", "<=", ">", ">=", "is", "is not",
                ],
                _ => &["=", "!=", "in", "not in", "is", "is not"],
            };
            if !ok_ops.contains(&op.as_str()) {
                errors.push(unsupported(op, field));
                return;
            }
            for v in values(operand) {
                let Operand::Value(v) = v else {
                    if let Operand::Function(name) = v {
                        let ok = (name.eq_ignore_ascii_case("currentUser") && f == "assignee")
                            || (name.eq_ignore_ascii_case("now")
                                && (f == "created" || f == "updated"));
                        if !ok {
                            errors.push(format!("Unable to find JQL function '{name}()'."));
                        }
                    }
                    continue;
                };
                let known = match f {
                    "project" => state.projects.iter().any(|p| {
                        p.key.eq_ignore_ascii_case(v)
                            || p.name.eq_ignore_ascii_case(v)
                            || p.id == *v
                    }),
                    "status" => state.workflow.status(v).is_some(),
                    "statuscategory" => Category::all().iter().any(|c| {
                        c.name().eq_ignore_ascii_case(v)
                            || c.key() == v.to_ascii_lowercase()
                            || c.id().to_string() == *v
                    }),
                    "assignee" => state.users.iter().any(|u| user_matches(u, v)),
                    "key" => {
                        if state.by_key.contains_key(&v.to_ascii_uppercase())
                            || v.parse::<u64>()
                                .is_ok_and(|id| state.issues.contains_key(&id))
                        {
                            true
                        } else {
                            errors.push(format!(
                                "An issue with key '{v}' does not exist for field 'key'."
                            ));
                            continue;
                        }
                    }
                    "created" | "updated" => {
                        if parse_date(v, Timestamp::now()).is_none() {
                            errors.push(format!(
                                "Date value '{v}' for field '{field}' is invalid. Valid formats include: 'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period format e.g. '-5d', '4w 2d'."
                            ));
                        }
                        continue;
                    }
                    _ => true,
                };
                if !known {
                    errors.push(bad_value(v, field));
                }
            }
        }
    }
}

fn user_matches(u: &UserDef, v: &str) -> bool {
    u.account_id == v
        || u.name.eq_ignore_ascii_case(v)
        || u.email.eq_ignore_ascii_case(v)
        || u.display_name.eq_ignore_ascii_case(v)
}

/// Whether `issue` matches; `me` is the calling user's account id.
pub(crate) fn matches(e: &Expr, issue: &IssueRec, state: &State, me: &str) -> bool {
    match e {
        Expr::And(a, b) => matches(a, issue, state, me) && matches(b, issue, state, me),
        Expr::Or(a, b) => matches(a, issue, state, me) || matches(b, issue, state, me),
        Expr::Not(a) => !matches(a, issue, state, me),
        Expr::Clause { field, op, operand } => clause(field, op, operand, issue, state, me),
    }
}

fn clause(
    field: &str,
    op: &str,
    operand: &Operand,
    issue: &IssueRec,
    state: &State,
    me: &str,
) -> bool {
    let f = canonical(field).unwrap_or("");
    let status = state
        .workflow
        .statuses
        .iter()
        .find(|s| s.id == issue.status_id);
    if op == "is" || op == "is not" {
        let empty = match f {
            "labels" => issue.labels.is_empty(),
            "assignee" => issue.assignee.is_none(),
            "description" => issue.description.as_deref().is_none_or(str::is_empty),
            _ => false,
        };
        return empty == (op == "is");
    }
    if op == "~" || op == "!~" {
        let needle = match operand {
            Operand::Value(v) => v.to_lowercase(),
            _ => return false,
        };
        let needle = needle.trim_matches('*');
        let hay = match f {
            "summary" => issue.summary.to_lowercase(),
            "description" => issue.description.clone().unwrap_or_default().to_lowercase(),
            _ => format!(
                "{} {}",
                issue.summary,
                issue.description.clone().unwrap_or_default()
            )
            .to_lowercase(),
        };
        let found = needle.split_whitespace().all(|w| hay.contains(w));
        return found == (op == "~");
    }
    // Equality-style: does one value match?
    let one = |v: &Operand| -> bool {
        match (f, v) {
            ("assignee", Operand::Function(_)) => issue.assignee.as_deref() == Some(me),
            (_, Operand::Empty) => match f {
                "labels" => issue.labels.is_empty(),
                "assignee" => issue.assignee.is_none(),
                _ => false,
            },
            (_, Operand::Value(v)) => match f {
                "project" => state
                    .projects
                    .iter()
                    .find(|p| {
                        p.key.eq_ignore_ascii_case(v)
                            || p.name.eq_ignore_ascii_case(v)
                            || p.id == *v
                    })
                    .is_some_and(|p| p.key == issue.project),
                "key" => issue.key.eq_ignore_ascii_case(v) || issue.id.to_string() == *v,
                "labels" => issue.labels.iter().any(|l| l == v),
                "status" => state
                    .workflow
                    .status(v)
                    .is_some_and(|s| s.id == issue.status_id),
                "statuscategory" => status.is_some_and(|s| {
                    s.category.name().eq_ignore_ascii_case(v)
                        || s.category.key() == v.to_ascii_lowercase()
                        || s.category.id().to_string() == *v
                }),
                "assignee" => issue
                    .assignee
                    .as_deref()
                    .and_then(|a| state.users.iter().find(|u| u.account_id == a))
                    .is_some_and(|u| user_matches(u, v)),
                _ => false,
            },
            _ => false,
        }
    };
    if f == "created" || f == "updated" {
        let at = if f == "created" {
            issue.created
        } else {
            issue.updated
        };
        let now = Timestamp::now();
        let cmp_to = |v: &Operand| -> Option<Ordering> {
            let t = match v {
                Operand::Value(v) => parse_date(v, now)?,
                Operand::Function(_) => now,
                _ => return None,
            };
            Some(at.cmp(&t))
        };
        return match op {
            "in" => values(operand)
                .iter()
                .any(|v| cmp_to(v) == Some(Ordering::Equal)),
            "not in" => !values(operand)
                .iter()
                .any(|v| cmp_to(v) == Some(Ordering::Equal)),
            _ => match cmp_to(operand) {
                None => false,
                Some(o) => match op {
                    "=" => o == Ordering::Equal,
                    "!=" => o != Ordering::Equal,
                    "<" => o == Ordering::Less,
                    "<=" => o != Ordering::Greater,
                    ">" => o == Ordering::Greater,
                    ">=" => o != Ordering::Less,
                    _ => false,
                },
            },
        };
    }
    if f == "key" && matches!(op, "<" | "<=" | ">" | ">=") {
        let Operand::Value(v) = operand else {
            return false;
        };
        let Some((proj, num)) = v.rsplit_once('-') else {
            return false;
        };
        let Ok(num) = num.parse::<u64>() else {
            return false;
        };
        if !proj.eq_ignore_ascii_case(&issue.project) {
            return false;
        }
        let o = issue.number.cmp(&num);
        return match op {
            "<" => o == Ordering::Less,
            "<=" => o != Ordering::Greater,
            ">" => o == Ordering::Greater,
            _ => o != Ordering::Less,
        };
    }
    // Like Jira: `!=` and `NOT IN` never match an empty field.
    let empty_field = match f {
        "labels" => issue.labels.is_empty(),
        "assignee" => issue.assignee.is_none(),
        _ => false,
    };
    match op {
        "=" => one(operand),
        "in" => values(operand).into_iter().any(one),
        "!=" => !empty_field && !one(operand),
        "not in" => !empty_field && !values(operand).into_iter().any(one),
        _ => false,
    }
}

/// Sorts by the `ORDER BY` fields (default: project, then key number).
pub(crate) fn sort(issues: &mut [&IssueRec], order: &[(String, bool)], state: &State) {
    let pos = |id: &str| {
        state
            .workflow
            .statuses
            .iter()
            .position(|s| s.id == id)
            .unwrap_or(usize::MAX)
    };
    issues.sort_by(|a, b| {
        for (field, asc) in order {
            let o = match canonical(field).unwrap_or("") {
                "created" => a.created.cmp(&b.created),
                "updated" => a.updated.cmp(&b.updated),
                "status" => pos(&a.status_id).cmp(&pos(&b.status_id)),
                "summary" => a.summary.cmp(&b.summary),
                "assignee" => a.assignee.cmp(&b.assignee),
                "project" => a.project.cmp(&b.project),
                "key" => (a.project.as_str(), a.number).cmp(&(b.project.as_str(), b.number)),
                _ => Ordering::Equal,
            };
            let o = if *asc { o } else { o.reverse() };
            if o != Ordering::Equal {
                return o;
            }
        }
        (a.project.as_str(), a.number).cmp(&(b.project.as_str(), b.number))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operators() {
        let q = parse(r#"project = OPS AND (labels IN ("a", b) OR NOT status = "In Progress") AND assignee IS EMPTY ORDER BY created DESC, key"#)
            .unwrap();
        assert!(q.filter.is_some());
        assert_eq!(
            q.order,
            vec![("created".to_string(), false), ("key".to_string(), true)]
        );
        parse("labels NOT IN (x) AND summary ~ \"foo bar\" AND assignee = currentUser()").unwrap();
        parse("ORDER BY key").unwrap();
        parse("labels != 'a\\'b'").unwrap();
    }

    #[test]
    fn syntax_errors() {
        assert!(parse("project = ").unwrap_err().contains("Expecting"));
        assert!(parse("project = OPS AND").is_err());
        assert!(parse("(project = OPS").is_err());
        assert!(parse("labels = \"unterminated").is_err());
        assert!(parse("labels = order").unwrap_err().contains("reserved"));
        assert!(parse("labels = a b").is_err());
    }

    #[test]
    fn dates() {
        let now: Timestamp = "2025-01-10T00:00:00Z".parse().unwrap();
        assert_eq!(
            parse_date("-1d", now).unwrap(),
            "2025-01-09T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_date("2025/01/02", now).unwrap(),
            "2025-01-02T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_date("2025-01-02 10:30", now).unwrap(),
            "2025-01-02T10:30:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(parse_date("yesterday", now).is_none());
        let ago = |minutes: i64| now.checked_sub(SignedDuration::from_mins(minutes)).ok();
        assert_eq!(parse_date("-5m", now), ago(5));
        assert_eq!(parse_date("-2h", now), ago(120));
        assert_eq!(parse_date("-1w", now), ago(7 * 24 * 60));
        assert_eq!(parse_date("-4w 2d", now), ago((4 * 7 + 2) * 24 * 60));
        assert_eq!(parse_date("3d", now), ago(-3 * 24 * 60));
        assert_eq!(parse_date("+1h", now), ago(-60));
        for bad in ["-5", "-m", "5x", "-5m x", "--5m", "-5M", ""] {
            assert!(parse_date(bad, now).is_none(), "{bad}");
        }
    }

    /// The operator's search: its tickets still waiting, or changed in the last minutes.
    #[tokio::test]
    async fn relative_updated_in_an_or_with_status_category() {
        let sim = crate::JiraSim::cloud().await.expect("sim");
        let ago = |minutes: i64| {
            Timestamp::now()
                .checked_sub(SignedDuration::from_mins(minutes))
                .expect("time")
                .to_string()
        };
        let seed = |summary: &str, label: &str, status: &str, updated: String| {
            sim.add_issue(crate::IssueSeed {
                project: "OPS".into(),
                summary: summary.into(),
                labels: vec![label.into()],
                status: Some(status.into()),
                created: Some(updated),
                ..Default::default()
            })
        };
        let fresh = seed(
            "commented a minute ago",
            "recac-agent",
            "In Progress",
            ago(1),
        );
        let stale = seed(
            "untouched for an hour",
            "recac-agent",
            "In Progress",
            ago(60),
        );
        let waiting = seed("waiting for an hour", "recac-agent", "To Do", ago(60));
        let other_label = seed("someone else's", "other", "To Do", ago(1));

        for period in ["-5m", "\"-5m\""] {
            let jql = format!(
                r#"project = "OPS" AND labels = "recac-agent" AND (statusCategory = "To Do" OR updated >= {period})"#
            );
            let query = parse(&jql).expect("parses");
            let st = crate::lock(&sim.shared.state);
            validate(&query, &st).expect("valid");
            let filter = query.filter.as_ref().expect("filter");
            let mut matched: Vec<&str> = st
                .issues
                .values()
                .filter(|issue| matches(filter, issue, &st, crate::BOT_ACCOUNT_ID))
                .map(|issue| issue.key.as_str())
                .collect();
            matched.sort();
            assert_eq!(matched, vec![fresh.as_str(), waiting.as_str()], "{jql}");
            assert!(!matched.contains(&stale.as_str()));
            assert!(!matched.contains(&other_label.as_str()));
        }
    }
}
