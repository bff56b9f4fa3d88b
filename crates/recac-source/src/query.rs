//! The JQL a source searches with.

use recac_jira::jql;

use crate::config::SourceConfig;

/// The source's search: its `jql` as written, or `project`, `label` and status built
/// with every value quoted, bounded by the project, oldest first (so a capped poll
/// takes the tickets that waited longest). With `changed_within` (minutes), a `project` +
/// `label` source's search also returns its tickets updated that recently, whatever their
/// status, for the commands in their comments ([`crate::conversation`]): one search per
/// poll either way, and [`is_ready`] tells the two kinds apart.
pub fn search_jql(source: &SourceConfig, changed_within: Option<u64>) -> String {
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
    let ready = match &source.status {
        Some(status) => jql::eq("status", status),
        None => jql::eq("statusCategory", "To Do"),
    };
    match changed_within.filter(|_| source.commands.enabled) {
        Some(minutes) => clauses.push(format!("({ready} OR updated >= -{minutes}m)")),
        None => clauses.push(ready),
    }
    format!("{} ORDER BY created ASC", clauses.join(" AND "))
}

/// For a `jql` source with `commands.jql`: its tickets updated in the last `minutes`.
pub fn changed_jql(source: &SourceConfig, minutes: u64) -> Option<String> {
    if !source.commands.enabled || source.jql.is_none() {
        return None;
    }
    let raw = source.commands.jql.as_deref()?.trim();
    let (query, order) = match raw.to_ascii_uppercase().rfind("ORDER BY") {
        Some(at) => (&raw[..at], &raw[at..]),
        None => (raw, ""),
    };
    Some(
        format!("({}) AND updated >= -{minutes}m {order}", query.trim())
            .trim()
            .to_string(),
    )
}

/// Whether a ticket from [`search_jql`] is ready to be taken (as opposed to returned only
/// because it changed): always for a `jql` source; otherwise its status is the source's
/// `status`, or of the To Do category.
pub fn is_ready(source: &SourceConfig, status: Option<&recac_jira::Status>) -> bool {
    if source.jql.is_some() {
        return true;
    }
    let Some(status) = status else {
        return false;
    };
    match &source.status {
        Some(wanted) => status.name.eq_ignore_ascii_case(wanted),
        None => status
            .status_category
            .as_ref()
            .and_then(|c| c.key.as_deref())
            .is_some_and(|k| k == "new"),
    }
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
    fn a_jql_source_reads_commands_only_with_its_own_search() {
        let mut s = SourceConfig::for_label("ops", "OPS", "recac-agent", "ns");
        assert_eq!(changed_jql(&s, 5), None);
        s.project = None;
        s.label = None;
        s.jql = Some("filter = 10001".into());
        assert_eq!(search_jql(&s, Some(5)), "filter = 10001");
        assert_eq!(changed_jql(&s, 5), None);
        s.commands.jql = Some("project = OPS AND labels = done-by-bot ORDER BY key".into());
        assert_eq!(
            changed_jql(&s, 5).as_deref(),
            Some("(project = OPS AND labels = done-by-bot) AND updated >= -5m ORDER BY key")
        );
    }

    #[test]
    fn ready_means_the_sources_status_or_the_to_do_category() {
        let status = |name: &str, category: &str| recac_jira::model::Status {
            id: None,
            name: name.into(),
            status_category: Some(recac_jira::model::StatusCategory {
                key: Some(category.into()),
                name: None,
            }),
        };
        let mut s = SourceConfig::for_label("ops", "OPS", "recac-agent", "ns");
        assert!(is_ready(&s, Some(&status("To Do", "new"))));
        assert!(!is_ready(&s, Some(&status("In Review", "indeterminate"))));
        assert!(!is_ready(&s, None));
        s.status = Some("Ready for agent".into());
        assert!(is_ready(
            &s,
            Some(&status("ready for agent", "indeterminate"))
        ));
        assert!(!is_ready(&s, Some(&status("To Do", "new"))));
    }

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
            search_jql(&s, None),
            r#"project = "OPS" AND labels = "recac-agent" AND statusCategory = "To Do" ORDER BY created ASC"#
        );
        assert_eq!(
            search_jql(&s, Some(3)),
            r#"project = "OPS" AND labels = "recac-agent" AND (statusCategory = "To Do" OR updated >= -3m) ORDER BY created ASC"#
        );
        s.commands.enabled = false;
        assert!(!search_jql(&s, Some(3)).contains("updated"));
        s.label = Some(r#"a"b"#.into());
        s.status = Some("Ready for agent".into());
        let q = search_jql(&s, None);
        assert!(q.contains(r#"labels = "a\"b""#), "{q}");
        assert!(q.contains(r#"status = "Ready for agent""#), "{q}");
    }
}
