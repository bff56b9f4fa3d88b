//! `AgentTaskSchedule`: recurring agent work, modelled on `batch/v1` CronJob. Each due time
//! of `spec.schedule` becomes one AgentTask made from `spec.taskTemplate`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AgentTaskSpec;

/// Default for `spec.successfulTasksHistoryLimit` (as CronJob's successfulJobsHistoryLimit).
pub const DEFAULT_SUCCESSFUL_HISTORY: i32 = 3;
/// Default for `spec.failedTasksHistoryLimit` (as CronJob's failedJobsHistoryLimit).
pub const DEFAULT_FAILED_HISTORY: i32 = 1;
/// The longest schedule name: a task's name adds `-<minutes since 1970>` (up to 11
/// characters) and must stay a valid label value (63 characters), as CronJob's 52.
pub const MAX_SCHEDULE_NAME: usize = 52;

/// Labels and annotations the schedule controller puts on the tasks it creates.
pub mod schedule_labels {
    /// The schedule that created the task (its name).
    pub const SCHEDULE: &str = "recac.io/schedule";
    /// The due time the task was created for (RFC 3339, UTC).
    pub const SCHEDULED_AT: &str = "recac.io/scheduled-at";
}

/// The structural check of `spec.schedule` done at admission: five fields, each a list of
/// `*`, `?`, values, ranges and steps within the field's range (month and weekday names
/// allowed), or one of the macros. What the pattern cannot see (a range that runs backwards,
/// a step of 0, a date that never exists) is reported by the controller in the `Ready`
/// condition and an Event, naming `spec.schedule`.
pub const SCHEDULE_RULE: &str = concat!(
    "self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|",
    // minute
    r"(\\*|[0-5]?[0-9](-[0-5]?[0-9])?)(/[0-9]+)?(,(\\*|[0-5]?[0-9](-[0-5]?[0-9])?)(/[0-9]+)?)*",
    r"\\s+",
    // hour
    r"(\\*|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[0-9]+)?(,(\\*|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[0-9]+)?)*",
    r"\\s+",
    // day of month
    r"(\\*|\\?|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[0-9]+)?(,(\\*|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[0-9]+)?)*",
    r"\\s+",
    // month
    r"(\\*|(0?[1-9]|1[0-2]|[A-Za-z]{3})(-(0?[1-9]|1[0-2]|[A-Za-z]{3}))?)(/[0-9]+)?(,(\\*|(0?[1-9]|1[0-2]|[A-Za-z]{3})(-(0?[1-9]|1[0-2]|[A-Za-z]{3}))?)(/[0-9]+)?)*",
    r"\\s+",
    // day of week
    r"(\\*|\\?|([0-7]|[A-Za-z]{3})(-([0-7]|[A-Za-z]{3}))?)(/[0-9]+)?(,(\\*|([0-7]|[A-Za-z]{3})(-([0-7]|[A-Za-z]{3}))?)(/[0-9]+)?)*",
    ")$')"
);

/// The message of [`SCHEDULE_RULE`].
pub const SCHEDULE_RULE_MESSAGE: &str = "spec.schedule must be a standard 5-field cron expression (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT; with *, lists, ranges and /steps) or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly";

/// Recurring agent work, the Kubernetes way: like a CronJob whose jobs are AgentTasks.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "recac.io",
    version = "v1alpha1",
    kind = "AgentTaskSchedule",
    namespaced,
    shortname = "ats",
    category = "recac",
    status = "AgentTaskScheduleStatus",
    derive = "PartialEq",
    doc = "Recurring agent work, like a CronJob whose runs are AgentTasks: each due time of spec.schedule creates one AgentTask from spec.taskTemplate.",
    validation = kube::core::Rule::new("self.metadata.name.size() <= 52").message("metadata.name of an AgentTaskSchedule must be at most 52 characters: each run's AgentTask is named <schedule>-<minutes since 1970>"),
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule","description":"When runs are due (cron)"}"#,
    printcolumn = r#"{"name":"Timezone","type":"string","jsonPath":".spec.timeZone","description":"The time zone of the schedule (UTC when unset)","priority":1}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend","description":"Whether new runs are held"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.activeCount","description":"Runs whose AgentTask has not finished"}"#,
    printcolumn = r#"{"name":"Last Schedule","type":"date","jsonPath":".status.lastScheduleTime","description":"The due time of the latest run"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskScheduleSpec {
    /// When runs are due, in cron format: five fields (minute, hour, day of month, month,
    /// day of week) or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight,
    /// @hourly, as for CronJob. When both day of month and day of week are restricted, a day
    /// matching either is due. Malformed expressions are rejected at admission; the rest
    /// (a backwards range, a step of 0, a date that never exists) make the Ready condition
    /// False with reason InvalidSchedule, and no run is created.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = kube::core::Rule::new(SCHEDULE_RULE).message(SCHEDULE_RULE_MESSAGE))]
    pub schedule: String,

    /// The IANA time zone the schedule is read in (for example Europe/Berlin or
    /// America/New_York); unset means UTC. A wall-clock time that a daylight-saving change
    /// skips runs once, right after the change; one that occurs twice runs once, at its first
    /// occurrence. An unknown zone makes the Ready condition False with reason
    /// InvalidTimeZone, and no run is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$') && self != 'Local'").message("spec.timeZone must be an IANA time zone name such as Europe/Berlin or UTC"))]
    pub time_zone: Option<String>,

    /// When true, no new run is created (a run due meanwhile counts as missed; see
    /// startingDeadlineSeconds). Running tasks are not affected.
    #[serde(default)]
    pub suspend: bool,

    /// What to do when a run is due while an earlier run's task has not finished: Allow
    /// (run both), Forbid (skip the new run while the earlier one runs) or Replace (delete
    /// the running task, then create the new one).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// How late a run may still start, in seconds after its due time (for example after the
    /// operator was down, or while a Forbid policy held it back). Unset means no limit: the
    /// latest missed run starts as soon as it can. Older missed runs are never started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,

    /// How many succeeded AgentTasks of this schedule to keep (0 to 100); the oldest are
    /// deleted, and their Jobs with them.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_tasks_history_limit: i32,

    /// How many failed AgentTasks of this schedule to keep (0 to 100); the oldest are deleted,
    /// and their Jobs with them.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_tasks_history_limit: i32,

    /// The AgentTask each run creates.
    pub task_template: AgentTaskTemplate,
}

fn default_successful_history() -> i32 {
    DEFAULT_SUCCESSFUL_HISTORY
}

fn default_failed_history() -> i32 {
    DEFAULT_FAILED_HISTORY
}

/// What to do with a run that is due while an earlier one has not finished.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ConcurrencyPolicy {
    /// Runs may overlap.
    #[default]
    Allow,
    /// A due run is skipped while an earlier run's task has not finished.
    Forbid,
    /// The unfinished tasks are deleted and the due run is created.
    Replace,
}

impl ConcurrencyPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyPolicy::Allow => "Allow",
            ConcurrencyPolicy::Forbid => "Forbid",
            ConcurrencyPolicy::Replace => "Replace",
        }
    }
}

/// The AgentTask a run creates: its labels and annotations, and its spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskTemplate {
    /// Labels and annotations copied to each run's AgentTask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,

    /// The spec of each run's AgentTask, with the same fields and rules as an AgentTask's
    /// spec (its fields that cannot change after create can change in the template: they
    /// apply to the next run).
    #[schemars(schema_with = "template_spec_schema")]
    pub spec: AgentTaskSpec,
}

/// Labels and annotations for each run's AgentTask.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels of each run's AgentTask (recac.io/schedule is added).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations of each run's AgentTask (recac.io/scheduled-at is added).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// AgentTaskSpec's schema without its transition rules (`oldSelf`): in a template, a field
/// that is immutable on a task may change for the next run.
fn template_spec_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut value = generator.subschema_for::<AgentTaskSpec>().to_value();
    drop_transition_rules(&mut value);
    schemars::Schema::try_from(value).unwrap_or_else(|_| generator.subschema_for::<AgentTaskSpec>())
}

fn drop_transition_rules(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                rules.retain(|rule| {
                    !rule
                        .get("rule")
                        .and_then(|r| r.as_str())
                        .is_some_and(|r| r.contains("oldSelf"))
                });
                if rules.is_empty() {
                    map.remove("x-kubernetes-validations");
                }
            }
            for child in map.values_mut() {
                drop_transition_rules(child);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                drop_transition_rules(item);
            }
        }
        _ => {}
    }
}

/// What the schedule controller observed and did. Written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskScheduleStatus {
    /// The due time of the latest run created (or found already created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the latest run that succeeded finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,

    /// The next due time, in UTC (absent while suspended or invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// The runs whose AgentTask has not finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ObjectReference>,

    /// How many runs are active (the length of active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_count: Option<i32>,

    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (the schedule is valid and runs are being created; False with reason
    /// InvalidSchedule, InvalidTimeZone or Suspended) and Skipped (True when the latest due
    /// run was not created: reason ConcurrencyForbid, DeadlineExceeded or NameTaken).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_template_keeps_creation_rules_and_drops_transition_rules() {
        let crd = serde_json::to_value(AgentTaskSchedule::crd()).expect("crd json");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let template = &spec["properties"]["taskTemplate"]["properties"]["spec"];
        let text = template.to_string();
        assert!(
            text.contains("has(self.prompt) || has(self.ticket)"),
            "{text}"
        );
        assert!(!text.contains("oldSelf"), "{text}");
        assert!(
            spec["properties"]["schedule"]["x-kubernetes-validations"]
                .to_string()
                .contains("spec.schedule must be")
        );
    }
}
