//! The I/O of namespace budgets (what they are and why: [`crate::namespace_budget`]): each
//! namespace's spend record read from a cache, a task's total counted into it once its
//! status shows it, the hold of new attempts, and one `BudgetSpent` Event per period.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use recac_api::{AgentTask, AgentTaskStatus};
use recac_runtime::cache::{CacheSpec, strip_metadata};
use recac_runtime::events::EventType;
use recac_runtime::kinds::{TaskSummary, list_then_watch, scoped_apis};
use recac_runtime::spend::{self, Amounts, Held, Ledger, PeriodBudget};
use recac_runtime::spend_ledger::{self, LedgerMap};
use recac_runtime::store::Lookup;
use tracing::{info, warn};

use super::{ReconcileError, TaskController, TermContext};
use crate::config::NamespaceBudget;
use crate::namespace_budget::{self, LEDGER_LABEL, LEDGER_NAME, LEDGER_SELECTOR, NamespaceHold};
use crate::naming::TaskIdentity;

/// The cache of the namespaces' spend records (`None`: no namespace has a budget).
pub fn spend_ledger_cache(
    client: &Client,
    budgets: &[NamespaceBudget],
) -> Option<CacheSpec<ConfigMap>> {
    if budgets.is_empty() {
        return None;
    }
    let namespaces: Vec<String> = budgets.iter().map(|b| b.namespace.clone()).collect();
    Some(CacheSpec {
        name: "spend-ledgers".into(),
        apis: scoped_apis(client, &namespaces),
        namespaces,
        watch: list_then_watch().labels(LEDGER_SELECTOR),
        strip: strip_config_map,
        hooks: Vec::new(),
    })
}

fn strip_config_map(map: &mut ConfigMap) {
    strip_metadata(&mut map.metadata);
}

/// The spend records as last parsed, per namespace, with the resourceVersion parsed: a
/// reconcile parses a record again only when it changed.
#[derive(Default)]
pub(super) struct ParsedLedgers(Mutex<HashMap<String, ParsedLedger>>);

/// A record's resourceVersion and what it parsed to (or why it did not).
type ParsedLedger = (String, Result<Arc<Ledger>, String>);

/// Per term: which tasks a namespace's budget holds (to wake when it no longer does), and
/// which totals this term counted that the cache does not show yet.
#[derive(Default)]
pub(super) struct NamespaceSpendState {
    held: Mutex<HashMap<String, HashSet<String>>>,
    counted: Mutex<HashMap<String, Amounts>>,
}

fn ledger_map(namespace: &str) -> LedgerMap<'_> {
    const LABELS: [(&str, &str); 2] = [("app.kubernetes.io/managed-by", "recac"), LEDGER_LABEL];
    LedgerMap {
        namespace,
        name: LEDGER_NAME,
        labels: &LABELS,
    }
}

impl TaskController {
    /// The spend record of `namespace` as the cache has it (none yet: an empty one), or why
    /// it cannot be read.
    fn cached_ledger(&self, namespace: &str) -> Result<Arc<Ledger>, String> {
        let Some(cache) = &self.spend_ledgers else {
            return Ok(Arc::default());
        };
        let map = match cache
            .store()
            .lookup(&ObjectRef::new(LEDGER_NAME).within(namespace))
        {
            Lookup::Found(map) => map,
            Lookup::Missing => return Ok(Arc::default()),
            Lookup::Unreadable(err) => return Err(format!("its cached copy is unreadable: {err}")),
        };
        let version = map.resource_version().unwrap_or_default();
        if let Ok(parsed) = self.parsed_ledgers.0.lock()
            && let Some((seen, ledger)) = parsed.get(namespace)
            && !version.is_empty()
            && *seen == version
        {
            return ledger.clone();
        }
        let ledger = spend_ledger::parse(&map)
            .map(|ledger| Arc::new(ledger.unwrap_or_default()))
            .map_err(|err| format!("key {} is not a spend ledger: {err}", spend_ledger::KEY));
        if let Ok(mut parsed) = self.parsed_ledgers.0.lock() {
            parsed.insert(namespace.to_string(), (version, ledger.clone()));
        }
        ledger
    }

    /// Whether `namespace`'s budget holds new attempts, by its cached record.
    fn hold_of(&self, namespace: &str) -> Option<(NamespaceHold, Result<Arc<Ledger>, String>)> {
        let budget = self.namespace_budgets.of(namespace)?;
        let ledger = self.cached_ledger(namespace);
        let hold = namespace_budget::hold(
            namespace,
            budget,
            ledger.as_deref().map_err(String::as_str),
            recac_runtime::clock::now(),
        )?;
        Some((hold, ledger))
    }

    async fn publish_spent(&self, namespace: &str, held: &Held) {
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(namespace.to_string()),
            name: Some(LEDGER_NAME.into()),
            ..Default::default()
        };
        let note = format!(
            "namespace {namespace}: the {} is spent; no new run starts there until {}",
            held.what, held.until
        );
        info!(namespace, period = %held.period, "{note}");
        if let Err(err) = self
            .events
            .publish(&regarding, EventType::Warning, "BudgetSpent", &note)
            .await
        {
            warn!(namespace, error = %err, "the BudgetSpent Event was not published");
        }
    }

    /// Marks the spent period announced in the record and publishes its Event, unless
    /// another writer did first.
    async fn announce_spent(&self, namespace: &str, budget: &PeriodBudget) {
        let now = recac_runtime::clock::now();
        let mut announce = None;
        let outcome = spend_ledger::update(&self.client, ledger_map(namespace), |ledger| {
            announce = spend::held(ledger, budget, now).filter(|h| spend::announce(ledger, h));
            announce.is_some()
        })
        .await;
        match (outcome, announce) {
            (Ok(_), Some(held)) => self.publish_spent(namespace, &held).await,
            (Ok(_), None) => {}
            (Err(err), _) => {
                warn!(namespace, error = %err, "cannot mark the spent budget announced")
            }
        }
    }
}

impl TermContext {
    /// Whether the namespace's budget holds the task's new attempt (called only for a task
    /// that wants one). The first hold seen of a period is announced.
    pub(super) async fn namespace_hold(&self, id: &TaskIdentity) -> Option<NamespaceHold> {
        let c = &self.controller;
        let budget = c.namespace_budgets.of(&id.namespace)?;
        let held = c.hold_of(&id.namespace);
        if let Ok(mut sets) = self.namespace_spend.held.lock() {
            let set = sets.entry(id.namespace.clone()).or_default();
            if held.is_some() {
                set.insert(id.name.clone());
            } else {
                set.remove(&id.name);
            }
        }
        let (hold, ledger) = held?;
        if let (Some(spent), Ok(ledger)) = (&hold.spent, &ledger)
            && ledger.announced.as_deref() != Some(spent.period.as_str())
        {
            c.announce_spent(&id.namespace, budget).await;
        }
        Some(hold)
    }

    /// Brings the task's entry in its namespace's spend record up to the total `status`
    /// shows (the status as written): a no-op, without a request, when the cached record
    /// (or this term's own last write) already counts it.
    pub(super) async fn sync_namespace_spend(
        &self,
        id: &TaskIdentity,
        status: &AgentTaskStatus,
    ) -> Result<(), ReconcileError> {
        let c = &self.controller;
        let Some(budget) = c.namespace_budgets.of(&id.namespace) else {
            return Ok(());
        };
        let Some(spend) = &status.spend else {
            return Ok(());
        };
        let total = spend::task_spend(&id.uid, spend);
        if total.amounts.is_zero() {
            return Ok(());
        }
        if let Ok(ledger) = c.cached_ledger(&id.namespace)
            && ledger.uncounted(&total).is_zero()
        {
            if let Ok(mut counted) = self.namespace_spend.counted.lock() {
                counted.remove(&id.uid);
            }
            return Ok(());
        }
        let written_by_this_term = self.namespace_spend.counted.lock().is_ok_and(|counted| {
            counted
                .get(&id.uid)
                .is_some_and(|done| total.amounts.beyond(done).is_zero())
        });
        if written_by_this_term {
            return Ok(());
        }
        let live: HashSet<String> = c
            .tasks
            .store()
            .scan::<TaskSummary>()
            .filter(|t| t.metadata.namespace.as_deref() == Some(id.namespace.as_str()))
            .filter_map(|t| t.metadata.uid)
            .collect();
        let now = recac_runtime::clock::now();
        let spent_at = namespace_budget::spent_at(status, now);
        let mut announce = None;
        // Between the status that shows the spend and the record that counts it.
        recac_runtime::failpoint::hit("task-controller.before-namespace-spend");
        spend_ledger::update(&c.client, ledger_map(&id.namespace), |ledger| {
            let (changed, announced) =
                namespace_budget::count(ledger, budget, &total, spent_at, now, |uid| {
                    live.contains(uid)
                });
            announce = announced;
            changed
        })
        .await
        .map_err(|source| ReconcileError::SpendLedger {
            task: id.key(),
            source,
        })?;
        if let Ok(mut counted) = self.namespace_spend.counted.lock() {
            counted.insert(id.uid.clone(), total.amounts.clone());
        }
        info!(task = %id.key(), tokens = total.amounts.tokens, "counted the task's spend in its namespace's record");
        if let Some(held) = announce {
            c.publish_spent(&id.namespace, &held).await;
        }
        Ok(())
    }

    /// The held tasks of `namespace`, when its record no longer holds them.
    fn released(&self, namespace: &str) -> Vec<ObjectRef<AgentTask>> {
        if self.controller.hold_of(namespace).is_some() {
            return Vec::new();
        }
        let names = self
            .namespace_spend
            .held
            .lock()
            .ok()
            .and_then(|mut sets| sets.remove(namespace))
            .unwrap_or_default();
        names
            .into_iter()
            .map(|name| ObjectRef::new(&name).within(namespace))
            .collect()
    }
}

/// Wakes the tasks a namespace's budget held once a change of its record lifts the hold
/// (a repaired or deleted record); a rollover wakes them by their own timer.
pub(super) fn released_by_budget(
    ctx: Arc<TermContext>,
) -> BoxStream<'static, ObjectRef<AgentTask>> {
    let Some(cache) = ctx.controller.spend_ledgers.clone() else {
        return futures::stream::empty().boxed();
    };
    cache
        .changes()
        .filter(|map| futures::future::ready(map.name_any() == LEDGER_NAME))
        .flat_map(move |map| {
            let namespace = map.namespace().unwrap_or_default();
            futures::stream::iter(ctx.released(&namespace))
        })
        .boxed()
}
