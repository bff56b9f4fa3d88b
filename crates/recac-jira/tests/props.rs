//! Property tests: JQL quoting (checked against the simulator's JQL parser)
//! and the ADF builder.

use proptest::prelude::*;
use recac_jira::adf::{COMMENT_BUDGET, Doc, plain_text, utf16_len};
use recac_jira::jql;
use recac_jira_sim::jql::{Expr, Operand, parse};
use serde_json::Value;

fn text_nodes(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if m.get("type").and_then(Value::as_str) == Some("text") {
                out.push(
                    m.get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                );
            }
            if let Some(c) = m.get("content") {
                text_nodes(c, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| text_nodes(x, out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any value, quoted, parses back as exactly one clause with that value.
    #[test]
    fn quoted_values_stay_one_literal(value in any::<String>()) {
        let q = format!("labels = {} ORDER BY key", jql::quote(&value));
        let parsed = parse(&q).map_err(|e| TestCaseError::fail(format!("{q}: {e}")))?;
        match parsed.filter {
            Some(Expr::Clause { field, op, operand: Operand::Value(v) }) => {
                prop_assert_eq!(field, "labels");
                prop_assert_eq!(op, "=");
                prop_assert_eq!(v, value.clone());
            }
            other => prop_assert!(false, "{q} parsed as {other:?}"),
        }
        prop_assert_eq!(jql::unquote(&jql::quote(&value)), Some(value));
    }

    /// Values with JQL syntax in them cannot add clauses.
    #[test]
    fn injection_is_inert(a in "[a-z\"'\\\\() =!~,]{0,30}", b in "[A-Z]{1,5}") {
        let q = jql::and(&[jql::eq("project", &b), jql::eq("labels", &a)]);
        let parsed = parse(&q).map_err(|e| TestCaseError::fail(format!("{q}: {e}")))?;
        let Some(Expr::And(l, r)) = parsed.filter else { return Err(TestCaseError::fail(q)) };
        let left_ok = matches!(*l, Expr::Clause { .. });
        prop_assert!(left_ok, "left: {:?}", l);
        let right_ok = matches!(*r, Expr::Clause { operand: Operand::Value(ref v), .. } if *v == a);
        prop_assert!(right_ok, "right: {:?}", r);
    }

    /// Field names are bare or quoted, and always parse as the same name.
    #[test]
    fn field_names_round_trip(name in "[A-Za-z][A-Za-z0-9 _]{0,12}") {
        let q = format!("{} = x", jql::field(&name));
        let parsed = parse(&q).map_err(|e| TestCaseError::fail(format!("{q}: {e}")))?;
        match parsed.filter {
            Some(Expr::Clause { field, .. }) => prop_assert_eq!(field, name),
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// ADF: a doc node, version 1, no empty text nodes, and the text survives.
    #[test]
    fn adf_is_well_formed(text in "[^`]{0,400}") {
        let adf = Doc::from_text(&text).to_adf();
        prop_assert_eq!(&adf["type"], "doc");
        prop_assert_eq!(&adf["version"], 1);
        let mut nodes = Vec::new();
        text_nodes(&adf, &mut nodes);
        prop_assert!(nodes.iter().all(|t| !t.is_empty()));
        let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace() && !c.is_control()).collect::<String>();
        prop_assert_eq!(squash(&plain_text(&adf)), squash(&text));
    }

    /// Any text, however long, is cut under the budget with the marker.
    #[test]
    fn truncation_respects_budget(unit in "\\PC{1,8}", n in 0usize..12_000, fence in any::<bool>()) {
        let body = unit.repeat(n);
        let text = if fence { format!("head\n```\n{body}\n```") } else { body };
        let doc = Doc::from_text(&text).truncated(COMMENT_BUDGET);
        let adf = doc.to_adf();
        let plain = plain_text(&adf);
        prop_assert!(utf16_len(&plain) <= COMMENT_BUDGET, "{}", utf16_len(&plain));
        if utf16_len(&text) > COMMENT_BUDGET + 10 {
            prop_assert!(plain.contains("comment truncated by recac"));
        }
        let mut nodes = Vec::new();
        text_nodes(&adf, &mut nodes);
        prop_assert!(nodes.iter().all(|t| !t.is_empty()));
        prop_assert!(utf16_len(&doc.to_wiki()) < 32_767);
    }
}
