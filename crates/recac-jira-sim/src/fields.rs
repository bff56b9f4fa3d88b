//! The issue fields the simulator knows (`GET /field`) and which of them a
//! request selects (`fields=`).

use serde_json::{Value, json};

use crate::model::SimFlavor;

/// A system field, as `GET /rest/api/{2,3}/field` describes it.
pub(crate) struct FieldInfo {
    pub id: &'static str,
    pub name: &'static str,
    pub clause_names: &'static [&'static str],
    pub navigable: bool,
    pub orderable: bool,
    pub searchable: bool,
    /// `(type, items)` of the JSON schema; `None` for fields without one.
    pub schema: Option<(&'static str, Option<&'static str>)>,
}

const fn field(
    id: &'static str,
    name: &'static str,
    clause_names: &'static [&'static str],
    flags: (bool, bool, bool),
    schema: Option<(&'static str, Option<&'static str>)>,
) -> FieldInfo {
    FieldInfo {
        id,
        name,
        clause_names,
        navigable: flags.0,
        orderable: flags.1,
        searchable: flags.2,
        schema,
    }
}

/// Every field the simulator renders or searches, with Jira's ids, names and clause names.
pub(crate) const FIELDS: &[FieldInfo] = &[
    field(
        "issuekey",
        "Key",
        &["id", "issue", "issuekey", "key"],
        (true, false, false),
        None,
    ),
    field(
        "summary",
        "Summary",
        &["summary"],
        (true, true, true),
        Some(("string", None)),
    ),
    field(
        "description",
        "Description",
        &["description"],
        (true, true, true),
        Some(("string", None)),
    ),
    field(
        "status",
        "Status",
        &["status"],
        (true, false, true),
        Some(("status", None)),
    ),
    field(
        "statusCategory",
        "Status Category",
        &["statusCategory"],
        (false, false, true),
        Some(("statusCategory", None)),
    ),
    field(
        "labels",
        "Labels",
        &["labels"],
        (true, true, true),
        Some(("array", Some("string"))),
    ),
    field(
        "assignee",
        "Assignee",
        &["assignee"],
        (true, true, true),
        Some(("user", None)),
    ),
    field(
        "project",
        "Project",
        &["project"],
        (true, false, true),
        Some(("project", None)),
    ),
    field(
        "created",
        "Created",
        &["created", "createdDate"],
        (true, false, true),
        Some(("datetime", None)),
    ),
    field(
        "updated",
        "Updated",
        &["updated", "updatedDate"],
        (true, false, true),
        Some(("datetime", None)),
    ),
    field(
        "comment",
        "Comment",
        &["comment"],
        (false, true, true),
        Some(("comments-page", None)),
    ),
];

pub(crate) fn info(id: &str) -> Option<&'static FieldInfo> {
    FIELDS.iter().find(|f| f.id == id)
}

/// One entry of `GET /field`.
pub(crate) fn field_json(f: &FieldInfo, flavor: SimFlavor) -> Value {
    let mut out = json!({
        "id": f.id,
        "name": f.name,
        "custom": false,
        "orderable": f.orderable,
        "navigable": f.navigable,
        "searchable": f.searchable,
        "clauseNames": f.clause_names,
    });
    if flavor == SimFlavor::Cloud {
        out["key"] = json!(f.id);
    }
    if let Some((ty, items)) = f.schema {
        let mut schema = json!({"type": ty, "system": f.id});
        if let Some(items) = items {
            schema["items"] = json!(items);
        }
        out["schema"] = schema;
    }
    out
}

/// Which fields a request asked for: `*all`, `*navigable`, field ids, and
/// `-id` to leave one out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSel {
    all: bool,
    navigable: bool,
    include: Vec<String>,
    exclude: Vec<String>,
}

impl FieldSel {
    pub fn all() -> FieldSel {
        FieldSel {
            all: true,
            ..FieldSel::default()
        }
    }

    pub fn navigable() -> FieldSel {
        FieldSel {
            navigable: true,
            ..FieldSel::default()
        }
    }

    pub fn from_list(list: &[String]) -> FieldSel {
        let mut sel = FieldSel::default();
        for item in list {
            match item.as_str() {
                "*all" => sel.all = true,
                "*navigable" => sel.navigable = true,
                other => match other.strip_prefix('-') {
                    Some(x) => sel.exclude.push(x.to_string()),
                    None => sel.include.push(other.to_string()),
                },
            }
        }
        sel
    }

    pub fn wants(&self, id: &str) -> bool {
        if self.exclude.iter().any(|x| x == id) {
            return false;
        }
        self.all
            || self.include.iter().any(|x| x == id)
            || (self.navigable && info(id).is_none_or(|f| f.navigable))
    }

    /// Whether only these (non-field) attributes were asked for, e.g. `id`.
    pub fn only(&self, attrs: &[&str]) -> bool {
        !self.all
            && !self.navigable
            && !self.include.is_empty()
            && self.include.iter().all(|x| attrs.contains(&x.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn selection() {
        let s = FieldSel::from_list(&list(&["summary", "labels"]));
        assert!(s.wants("summary") && s.wants("labels") && !s.wants("status"));
        let s = FieldSel::from_list(&list(&["*navigable", "-description", "comment"]));
        assert!(s.wants("summary") && !s.wants("description") && s.wants("comment"));
        assert!(!FieldSel::navigable().wants("comment"));
        assert!(FieldSel::all().wants("comment"));
        assert!(FieldSel::from_list(&list(&["id"])).only(&["id"]));
        assert!(!FieldSel::from_list(&[]).only(&["id"]));
        assert!(!FieldSel::from_list(&list(&["*all"])).only(&["id"]));
    }
}
