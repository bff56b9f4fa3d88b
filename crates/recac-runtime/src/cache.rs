//! Shared, warm caches: one watch per kind and scope, started once per process and read by every
//! component that needs the kind.
//!
//! A cache outlives the components' terms: a standby keeps it warm, so a new term starts
//! writing without a cold list. Each term subscribes to [`Cache::triggers`]: every object in
//! the cache at that moment, then every change as it is applied.
//!
//! A cache may span several namespaces (one watch each). Their events are merged into one
//! store; a namespace's relist removes only that namespace's objects that are gone.
//! Indexes that must follow the cache event by event (see [`CacheHook`]) are fed from the
//! same merged stream, so they never disagree with the store for long.

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::store::Store;

/// How many changes a term may fall behind before it re-reads the whole cache.
const CHANGE_BUFFER: usize = 1024;

/// What a [`CacheHook`] is told: an object was added or changed, or removed.
pub enum CacheChange<'a, K> {
    Upsert(&'a K),
    Delete(&'a K),
}

/// An index kept in step with a cache (called on the cache's task, in event order).
pub trait CacheHook<K>: Send + Sync {
    fn apply(&self, change: CacheChange<'_, K>);
}

/// Drops what no decision reads, to keep memory flat with many objects.
pub type Strip<K> = fn(&mut K);

/// Removes the parts of an object's metadata nobody here reads: managed fields and the
/// last-applied annotation kubectl keeps (a full copy of the object).
pub fn strip_metadata(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The reference of an object by namespace and name only (no uid or version to copy).
pub fn reference_to<K: Resource<DynamicType = ()>>(object: &K) -> ObjectRef<K> {
    let meta = object.meta();
    let reference = ObjectRef::new(meta.name.as_deref().unwrap_or_default());
    match meta.namespace.as_deref() {
        Some(namespace) => reference.within(namespace),
        None => reference,
    }
}

/// What a kind must be to be cached: a Kubernetes resource the store can encode and decode.
pub trait CachedKind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
}

impl<K> CachedKind for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// A warm cache of one kind.
pub struct Cache<K>
where
    K: Resource<DynamicType = ()> + 'static,
{
    name: String,
    store: Store<K>,
    ready: watch::Receiver<bool>,
    changes: broadcast::Sender<Change<K>>,
}

/// What the change stream carries: a reference to an applied object (read from the store
/// when delivered), or the deleted object itself (so owners can react to it).
enum Change<K: Resource<DynamicType = ()>> {
    Applied(ObjectRef<K>),
    Deleted(Arc<K>),
}

impl<K: Resource<DynamicType = ()>> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(r) => Change::Applied(r.clone()),
            Change::Deleted(o) => Change::Deleted(o.clone()),
        }
    }
}

/// One item of a change stream before it is read from the store.
enum Pending<K: Resource<DynamicType = ()>> {
    Reference(ObjectRef<K>),
    Object(Arc<K>),
}

impl<K> Clone for Cache<K>
where
    K: Resource<DynamicType = ()> + 'static,
{
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            store: self.store.clone(),
            ready: self.ready.clone(),
            changes: self.changes.clone(),
        }
    }
}

/// Everything a cache is made of.
pub struct CacheSpec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Names the cache in logs, health and `/readyz` (the plural resource name).
    pub name: String,
    /// One Api per watched scope (a namespace, or all namespaces).
    pub apis: Vec<Api<K>>,
    /// The namespace of each scope, in the order of `apis` (empty: one cluster-wide scope).
    pub namespaces: Vec<String>,
    pub watch: watcher::Config,
    pub strip: Strip<K>,
    pub hooks: Vec<Arc<dyn CacheHook<K>>>,
}

impl<K> Cache<K>
where
    K: CachedKind,
{
    /// The cache and the future that fills it (run it for the life of the process).
    pub fn new(spec: CacheSpec<K>) -> (Self, impl Future<Output = Result<(), String>> + Send) {
        let store = Store::default();
        let (ready_tx, ready_rx) = watch::channel(false);
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let cache = Self {
            name: spec.name.clone(),
            store: store.clone(),
            ready: ready_rx,
            changes: changes.clone(),
        };
        let driver = drive(spec, store, ready_tx, changes);
        (cache, driver)
    }
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + 'static,
{
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cached objects (may lag the apiserver by the watch's latency).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Whether every scope has been listed once.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// A check for `/readyz`: whether every scope has been listed once.
    pub fn readiness_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let ready = self.ready.clone();
        move || *ready.borrow()
    }

    /// Completes once every scope has been listed once.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Send + Sync + 'static,
{
    /// Every object in the cache now, then every object as it changes (a deleted object is
    /// delivered once more as it was last seen). When a reader falls more than the change
    /// buffer behind, it gets the whole cache again (nothing is lost). Objects are read
    /// from the store one at a time, as the reader takes them.
    pub fn triggers(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let snapshot = self.store.refs().into_iter().map(Pending::Reference);
        self.read(futures::stream::iter(snapshot).chain(self.pending_changes()))
    }

    /// Every object as it changes from now on, as [`Cache::triggers`] delivers them but
    /// without the objects already in the cache: for a reader that looks at the cache
    /// whenever another stream wakes it, and only needs to hear of later changes.
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.read(self.pending_changes())
    }

    /// References to what [`Cache::triggers`] delivers, without reading the objects: for a
    /// runner that reads each object when its reconcile starts.
    pub fn trigger_refs(&self) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
        let snapshot = self.store.refs().into_iter().map(Pending::Reference);
        futures::stream::iter(snapshot)
            .chain(self.pending_changes())
            .map(|pending| match pending {
                Pending::Reference(reference) => reference,
                Pending::Object(object) => reference_to(object.as_ref()),
            })
    }

    fn read(
        &self,
        pending: impl Stream<Item = Pending<K>> + Send + 'static,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let store = self.store.clone();
        pending.filter_map(move |pending| {
            futures::future::ready(match pending {
                Pending::Reference(reference) => store.get(&reference),
                Pending::Object(object) => Some(object),
            })
        })
    }

    fn pending_changes(&self) -> impl Stream<Item = Pending<K>> + Send + 'static {
        let receiver = self.changes.subscribe();
        let store = self.store.clone();
        futures::stream::unfold((receiver, store), |(mut receiver, store)| async move {
            let batch = match receiver.recv().await {
                Ok(Change::Applied(reference)) => vec![Pending::Reference(reference)],
                Ok(Change::Deleted(object)) => vec![Pending::Object(object)],
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    store.refs().into_iter().map(Pending::Reference).collect()
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((batch, (receiver, store)))
        })
        .flat_map(futures::stream::iter)
    }
}

async fn drive<K>(
    spec: CacheSpec<K>,
    store: Store<K>,
    ready: watch::Sender<bool>,
    changes: broadcast::Sender<Change<K>>,
) -> Result<(), String>
where
    K: CachedKind,
{
    let CacheSpec {
        name,
        apis,
        namespaces,
        watch,
        strip,
        hooks,
    } = spec;
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None; apis.len()]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let streams = apis.into_iter().enumerate().map(|(scope, api)| {
        watch_stream(api, watch.clone())
            .default_backoff()
            .modify(strip)
            .map(move |event| (scope, event))
            .boxed()
    });
    let mut merged = futures::stream::select_all(streams);
    let mut merger = Merger::new(scopes);
    while let Some((scope, event)) = merged.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(cache = %name, error = %err, "watch failed; retrying with backoff");
                continue;
            }
        };
        let was_ready = merger.ready;
        for out in merger.translate(scope, event, &store) {
            match &out {
                Event::Apply(object) | Event::InitApply(object) => {
                    store.upsert(object);
                    for hook in &hooks {
                        hook.apply(CacheChange::Upsert(object));
                    }
                    if merger.ready {
                        let _ = changes.send(Change::Applied(reference_to(object)));
                    }
                }
                Event::Delete(object) => {
                    store.remove(&reference_to(object));
                    for hook in &hooks {
                        hook.apply(CacheChange::Delete(object));
                    }
                    if merger.ready {
                        let _ = changes.send(Change::Deleted(Arc::new(object.clone())));
                    }
                }
                Event::Init | Event::InitDone => {}
            }
        }
        if merger.ready && !was_ready {
            info!(cache = %name, objects = store.len(), "cache synced");
            let _ = ready.send(true);
        }
    }
    Err("its watch stream ended".into())
}

/// Merges the watch events of several scopes into the events of one store.
///
/// The store sees one `Init … InitDone` (the first complete list of every scope), then only
/// `Apply` and `Delete`: a later relist of one scope becomes `Apply` for what it lists and
/// `Delete` for the objects of that scope the store has but the relist does not, so the
/// other scopes' objects stay. Nothing is kept per object between relists.
struct Merger<K: Resource<DynamicType = ()>> {
    ready: bool,
    /// Each scope's namespace (`None`: every namespace).
    scopes: Vec<Option<String>>,
    listed: Vec<bool>,
    relisting: Vec<Option<HashSet<ObjectRef<K>>>>,
    /// Deletes seen before the first complete list; applied right after it.
    early_deletes: Vec<K>,
}

impl<K> Merger<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned,
{
    fn new(scopes: Vec<Option<String>>) -> Self {
        let n = scopes.len();
        Self {
            ready: false,
            scopes,
            listed: vec![false; n],
            relisting: (0..n).map(|_| None).collect(),
            early_deletes: Vec::new(),
        }
    }

    fn upsert(&mut self, object: K) -> Event<K> {
        if !self.early_deletes.is_empty() {
            let reference = reference_to(&object);
            self.early_deletes.retain(|d| reference_to(d) != reference);
        }
        if self.ready {
            Event::Apply(object)
        } else {
            Event::InitApply(object)
        }
    }

    fn translate(&mut self, scope: usize, event: Event<K>, store: &Store<K>) -> Vec<Event<K>> {
        match event {
            Event::Init => {
                // Only a relist removes what it no longer lists: a scope's first list
                // needs no record of what it saw.
                self.relisting[scope] = self.listed[scope].then(HashSet::new);
                Vec::new()
            }
            Event::InitApply(object) => {
                if let Some(seen) = &mut self.relisting[scope] {
                    seen.insert(reference_to(&object));
                }
                vec![self.upsert(object)]
            }
            Event::InitDone => {
                let seen = self.relisting[scope].take().unwrap_or_default();
                let mut out: Vec<Event<K>> = Vec::new();
                if self.ready {
                    let cached = match self.scopes.get(scope) {
                        Some(Some(namespace)) => store.refs_in(namespace),
                        _ => store.refs(),
                    };
                    out.extend(
                        cached
                            .into_iter()
                            .filter(|reference| !seen.contains(reference))
                            .filter_map(|reference| store.get(&reference))
                            .map(|object| Event::Delete((*object).clone())),
                    );
                }
                self.listed[scope] = true;
                if !self.ready && self.listed.iter().all(|l| *l) {
                    self.ready = true;
                    out.push(Event::InitDone);
                    out.extend(self.early_deletes.drain(..).map(Event::Delete));
                }
                out
            }
            Event::Apply(object) => vec![self.upsert(object)],
            Event::Delete(object) => {
                if self.ready {
                    vec![Event::Delete(object)]
                } else {
                    self.early_deletes.push(object);
                    Vec::new()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    fn key_of<K: Resource>(object: &K) -> String {
        format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        )
    }
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(ns: &str, name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.into());
        cm.metadata.name = Some(name.into());
        cm
    }

    fn names(events: &[Event<ConfigMap>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Apply(o) => format!("apply {}", key_of(o)),
                Event::InitApply(o) => format!("init-apply {}", key_of(o)),
                Event::Delete(o) => format!("delete {}", key_of(o)),
                Event::Init => "init".into(),
                Event::InitDone => "init-done".into(),
            })
            .collect()
    }

    #[test]
    fn two_scopes_become_one_store_and_a_relist_keeps_the_other_scope() {
        let reader: Store<ConfigMap> = Store::default();
        let mut merger = Merger::new(vec![Some("a".to_string()), Some("b".to_string())]);
        let run = |merger: &mut Merger<ConfigMap>, scope, event| {
            let out = merger.translate(scope, event, &reader);
            for e in &out {
                match e {
                    Event::Apply(o) | Event::InitApply(o) => reader.upsert(o),
                    Event::Delete(o) => reader.remove(&reference_to(o)),
                    Event::Init | Event::InitDone => {}
                }
            }
            names(&out)
        };
        assert!(run(&mut merger, 0, Event::Init).is_empty());
        assert_eq!(
            run(&mut merger, 0, Event::InitApply(object("a", "1"))),
            ["init-apply a/1"]
        );
        assert!(run(&mut merger, 0, Event::InitDone).is_empty());
        assert!(!merger.ready, "scope b is not listed yet");
        run(&mut merger, 0, Event::Delete(object("a", "1")));
        run(&mut merger, 1, Event::Init);
        run(&mut merger, 1, Event::InitApply(object("b", "1")));
        assert_eq!(
            run(&mut merger, 1, Event::InitDone),
            ["init-done", "delete a/1"]
        );
        assert!(merger.ready);
        assert_eq!(reader.len(), 1);

        run(&mut merger, 0, Event::Apply(object("a", "2")));
        run(&mut merger, 0, Event::Apply(object("a", "3")));
        // Scope a relists and no longer has a/2: only a/2 goes; b/1 stays.
        run(&mut merger, 0, Event::Init);
        assert_eq!(
            run(&mut merger, 0, Event::InitApply(object("a", "3"))),
            ["apply a/3"]
        );
        assert_eq!(run(&mut merger, 0, Event::InitDone), ["delete a/2"]);
        let mut left: Vec<String> = reader.state().iter().map(|o| key_of(o.as_ref())).collect();
        left.sort();
        assert_eq!(left, ["a/3", "b/1"]);
    }
}
