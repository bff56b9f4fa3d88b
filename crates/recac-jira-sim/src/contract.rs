//! Checking JSON against the OpenAPI 3.0 description of Jira Cloud's REST API.
//!
//! A small validator for the schema keywords that description uses: `$ref`,
//! `type`, `properties`, `required`, `additionalProperties`, `items`, `enum`,
//! `allOf`, `anyOf`, `oneOf`, `nullable`, `readOnly` (not allowed in
//! requests), `writeOnly` (not allowed in replies), `minLength`/`maxLength`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::CallRecord;

/// File name of the contract.
pub const CONTRACT_FILE: &str = "jira-cloud-platform.openapi.json";

/// Whether a value is sent by the client or by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// A loaded OpenAPI document.
pub struct Contract {
    doc: Value,
}

/// A matched operation.
pub struct Operation<'a> {
    pub template: &'a str,
    pub op: &'a Value,
}

impl Contract {
    pub fn load(path: &Path) -> Result<Contract, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if doc.get("paths").and_then(Value::as_object).is_none() {
            return Err(format!("{}: no `paths`", path.display()));
        }
        Ok(Contract { doc })
    }

    /// The contract the tests check against: `$RECAC_JIRA_CONTRACT` when it names a file,
    /// else the copy this crate carries (`contract/`, with its provenance in `README.md`).
    pub fn locate() -> PathBuf {
        if let Some(p) = std::env::var_os("RECAC_JIRA_CONTRACT").map(PathBuf::from)
            && p.is_file()
        {
            return p;
        }
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contract")
            .join(CONTRACT_FILE)
    }

    /// Loads the contract [`Contract::locate`] finds.
    pub fn bundled() -> Result<Contract, String> {
        Self::load(&Self::locate())
    }

    /// The operation for a concrete method and path (`/rest/api/3/issue/OPS-1`);
    /// the template with the most literal segments wins.
    pub fn operation(&self, method: &str, path: &str) -> Option<Operation<'_>> {
        let method = method.to_ascii_lowercase();
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let paths = self.doc.get("paths")?.as_object()?;
        let mut best: Option<(usize, &str, &Value)> = None;
        for (template, item) in paths {
            let tsegs: Vec<&str> = template.trim_end_matches('/').split('/').collect();
            if tsegs.len() != segs.len() {
                continue;
            }
            let mut literal = 0;
            let ok = tsegs.iter().zip(&segs).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !s.is_empty()
                } else {
                    literal += 1;
                    t == s
                }
            });
            if !ok {
                continue;
            }
            let Some(op) = item.get(method.as_str()) else {
                continue;
            };
            if best.is_none_or(|(n, _, _)| literal > n) {
                best = Some((literal, template.as_str(), op));
            }
        }
        best.map(|(_, template, op)| Operation { template, op })
    }

    /// The JSON request body schema of an operation.
    pub fn request_schema<'a>(&self, op: &'a Value) -> Option<&'a Value> {
        op.get("requestBody")?
            .get("content")?
            .get("application/json")?
            .get("schema")
    }

    /// Whether the operation declares this response status; and its JSON schema, if any.
    pub fn response_schema<'a>(
        &self,
        op: &'a Value,
        status: u16,
    ) -> Result<Option<&'a Value>, String> {
        let responses = op
            .get("responses")
            .and_then(Value::as_object)
            .ok_or("operation has no responses")?;
        let resp = responses
            .get(&status.to_string())
            .or_else(|| responses.get("default"))
            .ok_or_else(|| {
                format!(
                    "status {status} is not a documented response ({:?})",
                    responses.keys().collect::<Vec<_>>()
                )
            })?;
        Ok(resp
            .get("content")
            .and_then(|c| c.get("application/json"))
            .and_then(|c| c.get("schema")))
    }

    /// Checks one recorded call: the operation must exist, its query
    /// parameters must be declared (array-valued ones sent one parameter per
    /// value, the contract's `form`/`explode` encoding), the request body
    /// must validate against the request schema and the reply against the
    /// schema of its status. Calls on `/rest/api/2` and `/rest/api/latest`
    /// are checked against the v3 operation: Jira Cloud serves the same
    /// shapes on both, apart from rich text, which the schemas leave untyped.
    pub fn check_call(&self, call: &CallRecord) -> Vec<String> {
        let what = format!("{} {}", call.method, call.path);
        let path = as_v3(&call.path);
        let Some(op) = self.operation(&call.method, &path) else {
            return vec![format!("{what}: not an operation of the contract")];
        };
        let mut problems = Vec::new();
        let declared: Vec<(&str, &Value)> = op
            .op
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| self.resolve(p).ok())
                    .filter(|p| p.get("in").and_then(Value::as_str) == Some("query"))
                    .filter_map(|p| Some((p.get("name")?.as_str()?, p)))
                    .collect()
            })
            .unwrap_or_default();
        for pair in call.query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = crate::params::decode(name);
            let value = crate::params::decode(value);
            match declared.iter().find(|(n, _)| *n == name) {
                None => problems.push(format!(
                    "{what}: query parameter `{name}` not in {}",
                    op.template
                )),
                Some((_, param)) => {
                    let is_array = param
                        .get("schema")
                        .and_then(|s| self.resolve(s).ok())
                        .and_then(|s| s.get("type"))
                        .and_then(Value::as_str)
                        == Some("array");
                    let explode = param
                        .get("explode")
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    if is_array && explode && value.contains(',') {
                        problems.push(format!(
                            "{what}: array parameter `{name}` sent comma-joined ({value:?}); the contract sends one `{name}=` per value"
                        ));
                    }
                }
            }
        }
        match (self.request_schema(op.op), &call.body) {
            (Some(schema), Some(body)) => {
                for e in self.validate(schema, body, Direction::Request) {
                    problems.push(format!("{what} request: {e}"));
                }
            }
            (None, Some(_)) => {
                problems.push(format!("{what}: sends a body, the contract has none"))
            }
            _ => {}
        }
        problems.extend(self.check_reply(&what, &op, call));
        problems
    }

    /// Checks only the reply of a recorded call (for calls made by clients
    /// whose requests are not under test): the operation must exist and the
    /// reply must validate against the schema of its status.
    pub fn check_response(&self, call: &CallRecord) -> Vec<String> {
        let what = format!("{} {}", call.method, call.path);
        match self.operation(&call.method, &as_v3(&call.path)) {
            None => vec![format!("{what}: not an operation of the contract")],
            Some(op) => self.check_reply(&what, &op, call),
        }
    }

    fn check_reply(&self, what: &str, op: &Operation<'_>, call: &CallRecord) -> Vec<String> {
        let mut problems = Vec::new();
        match self.response_schema(op.op, call.status) {
            Err(e) => problems.push(format!("{what}: {e}")),
            Ok(Some(schema)) => match &call.response {
                Some(body) => {
                    for e in self.validate(schema, body, Direction::Response) {
                        problems.push(format!("{what} response {}: {e}", call.status));
                    }
                }
                // `schema: {}` (anything) on a 201/204: an empty body is what Jira sends.
                None if schema.as_object().is_some_and(|o| o.is_empty()) => {}
                None => problems.push(format!("{what}: response {} has no JSON body", call.status)),
            },
            Ok(None) => {}
        }
        problems
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, String> {
        let mut s = schema;
        for _ in 0..32 {
            match s.get("$ref").and_then(Value::as_str) {
                None => return Ok(s),
                Some(r) => {
                    let pointer = r
                        .strip_prefix('#')
                        .ok_or_else(|| format!("external $ref {r}"))?;
                    s = self
                        .doc
                        .pointer(pointer)
                        .ok_or_else(|| format!("dangling $ref {r}"))?;
                }
            }
        }
        Err("$ref loop".into())
    }

    /// Validates `value` against `schema`; returns every problem with its JSON path.
    pub fn validate(&self, schema: &Value, value: &Value, dir: Direction) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(schema, value, dir, "$", &mut errors, 0);
        errors
    }

    fn check(
        &self,
        schema: &Value,
        value: &Value,
        dir: Direction,
        at: &str,
        errors: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 64 {
            return;
        }
        let schema = match self.resolve(schema) {
            Ok(s) => s,
            Err(e) => return errors.push(format!("{at}: {e}")),
        };
        if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.check(s, value, dir, at, errors, depth + 1);
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(any) = schema.get(key).and_then(Value::as_array) {
                let ok = any.iter().any(|s| {
                    let mut e = Vec::new();
                    self.check(s, value, dir, at, &mut e, depth + 1);
                    e.is_empty()
                });
                if !ok {
                    errors.push(format!("{at}: matches none of {key}"));
                }
            }
        }
        if let Some(ty) = schema.get("type").and_then(Value::as_str) {
            let ok = match ty {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                _ => true,
            };
            if !ok {
                errors.push(format!("{at}: expected {ty}, got {}", short(value)));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            errors.push(format!(
                "{at}: {} is not one of {}",
                short(value),
                Value::Array(allowed.clone())
            ));
        }
        if let Some(s) = value.as_str() {
            let n = s.chars().count() as u64;
            if schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                errors.push(format!("{at}: longer than maxLength"));
            }
            if schema
                .get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                errors.push(format!("{at}: shorter than minLength"));
            }
        }
        if let Some(items) = value.as_array()
            && let Some(item_schema) = schema.get("items")
        {
            for (i, item) in items.iter().enumerate() {
                self.check(
                    item_schema,
                    item,
                    dir,
                    &format!("{at}[{i}]"),
                    errors,
                    depth + 1,
                );
            }
        }
        if let Some(obj) = value.as_object() {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    // Read-only required properties are not expected in requests.
                    let read_only = props
                        .and_then(|p| p.get(r))
                        .and_then(|p| self.resolve(p).ok())
                        .is_some_and(|p| p.get("readOnly").and_then(Value::as_bool) == Some(true));
                    let exempt = dir == Direction::Request && read_only;
                    if !obj.contains_key(r) && !exempt {
                        errors.push(format!("{at}: missing required property `{r}`"));
                    }
                }
            }
            for (k, v) in obj {
                let path = format!("{at}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(prop) => {
                        let flag = |name: &str| {
                            prop.get(name).and_then(Value::as_bool) == Some(true)
                                || self
                                    .resolve(prop)
                                    .ok()
                                    .and_then(|p| p.get(name))
                                    .and_then(Value::as_bool)
                                    == Some(true)
                        };
                        if dir == Direction::Request && flag("readOnly") {
                            errors.push(format!("{path}: read-only property sent in a request"));
                        }
                        if dir == Direction::Response && flag("writeOnly") {
                            errors.push(format!("{path}: write-only property in a response"));
                        }
                        self.check(prop, v, dir, &path, errors, depth + 1);
                    }
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            errors.push(format!("{path}: property not in the schema"))
                        }
                        Some(extra @ Value::Object(_)) => {
                            self.check(extra, v, dir, &path, errors, depth + 1)
                        }
                        _ => {}
                    },
                }
            }
        }
    }
}

/// `/rest/api/2/…` and `/rest/api/latest/…` as the v3 path the contract describes.
fn as_v3(path: &str) -> String {
    for prefix in ["/rest/api/2/", "/rest/api/latest/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            return format!("/rest/api/3/{rest}");
        }
    }
    path.to_string()
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny() -> Contract {
        Contract {
            doc: json!({
                "paths": {
                    "/rest/api/3/issue/{key}": {"get": {"responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/I"}}}}}}},
                    "/rest/api/3/issue/picker": {"get": {"responses": {"200": {}}}}
                },
                "components": {"schemas": {"I": {"type": "object", "additionalProperties": false, "required": ["id"],
                    "properties": {"id": {"type": "string", "readOnly": true}, "n": {"type": "integer", "nullable": true},
                        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}}}}}
            }),
        }
    }

    #[test]
    fn matches_templates_preferring_literals() {
        let c = tiny();
        assert_eq!(
            c.operation("GET", "/rest/api/3/issue/OPS-1")
                .unwrap()
                .template,
            "/rest/api/3/issue/{key}"
        );
        assert_eq!(
            c.operation("GET", "/rest/api/3/issue/picker")
                .unwrap()
                .template,
            "/rest/api/3/issue/picker"
        );
        assert!(c.operation("POST", "/rest/api/3/issue/OPS-1").is_none());
        assert!(c.operation("GET", "/rest/api/3/nope").is_none());
    }

    #[test]
    fn validates() {
        let c = tiny();
        let op = c.operation("GET", "/rest/api/3/issue/X-1").unwrap().op;
        let s = c.response_schema(op, 200).unwrap().unwrap();
        assert!(
            c.validate(
                s,
                &json!({"id": "1", "n": null, "tags": ["a"]}),
                Direction::Response
            )
            .is_empty()
        );
        let e = c.validate(
            s,
            &json!({"n": "x", "tags": ["c"], "extra": 1}),
            Direction::Response,
        );
        assert_eq!(e.len(), 4, "{e:?}");
        let e = c.validate(s, &json!({"id": "1"}), Direction::Request);
        assert!(e[0].contains("read-only"), "{e:?}");
        assert!(c.response_schema(op, 500).is_err());
    }
}
