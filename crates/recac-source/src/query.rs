//! The JQL a source searches with.

use recac_jira::jql;

use crate::config::SourceConfig;

/// The source's search: its `jql` as written, or `project`, `label` and status built
/// with every value quoted, bounded by the project, oldest first (so a capped poll
/// takes the tickets that waited longest).
pub fn search_jql(source: &SourceConfig) -> String {
    if let Some(raw) = &source.jql {
        return raw.trim().to_string();
    }
    let mut clauses = Vec::new();
    if let Some(project) = &source.project {
        clauses.push(jql::eq("project", project));
    }
    if let Some(label) = &source.label {
        clauses.push(jql::eq("labels", label));
    }
    match &source.status {
        Some(status) => clauses.push(jql::eq("status", status)),
        None => clauses.push(jql::eq("statusCategory", "To Do")),
    }
    format!("{} ORDER BY created ASC", clauses.join(" AND "))
}

/// The search for tickets this source claimed that are not done: `strandedClaims.jql`, or
/// the source's project and label with every mark a claim leaves (the bot as assignee, the
/// claim labels). `None` for a `jql` source without `strandedClaims.jql`.
pub fn claimed_jql(source: &SourceConfig) -> Option<String> {
    if let Some(raw) = &source.stranded_claims.jql {
        return Some(raw.trim().to_string());
    }
    if source.jql.is_some() {
        return None;
    }
    let mut clauses = Vec::new();
    if let Some(project) = &source.project {
        clauses.push(jql::eq("project", project));
    }
    if let Some(label) = &source.label {
        clauses.push(jql::eq("labels", label));
    }
    if source.claim.assign {
        clauses.push("assignee = currentUser()".to_string());
    }
    for label in &source.claim.add_labels {
        clauses.push(jql::eq("labels", label));
    }
    clauses.push(jql::not_eq("statusCategory", "Done"));
    Some(format!("{} ORDER BY created ASC", clauses.join(" AND ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_tickets_are_found_by_every_claim_mark() {
        let mut s = SourceConfig::for_label("ops", "OPS", "recac-agent", "ns");
        s.claim.add_labels = vec!["recac-claimed".into()];
        assert_eq!(
            claimed_jql(&s).as_deref(),
            Some(
                r#"project = "OPS" AND labels = "recac-agent" AND assignee = currentUser() AND labels = "recac-claimed" AND statusCategory != "Done" ORDER BY created ASC"#
            )
        );
        s.jql = Some("filter = 10001".into());
        assert_eq!(claimed_jql(&s), None);
        s.stranded_claims.jql = Some(" assignee = currentUser() ".into());
        assert_eq!(claimed_jql(&s).as_deref(), Some("assignee = currentUser()"));
    }

    #[test]
    fn values_are_quoted_and_the_query_is_bounded() {
        let mut s = SourceConfig::for_label("ops", "OPS", "recac-agent", "ns");
        assert_eq!(
            search_jql(&s),
            r#"project = "OPS" AND labels = "recac-agent" AND statusCategory = "To Do" ORDER BY created ASC"#
        );
        s.label = Some(r#"a"b"#.into());
        s.status = Some("Ready for agent".into());
        let q = search_jql(&s);
        assert!(q.contains(r#"labels = "a\"b""#), "{q}");
        assert!(q.contains(r#"status = "Ready for agent""#), "{q}");
    }
}
