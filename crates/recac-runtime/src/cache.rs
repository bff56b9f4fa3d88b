//! Shared, warm caches: one reflector per kind, started once per process and read by every
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
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

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

/// A warm cache of one kind.
pub struct Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
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

impl<K> Clone for Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
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
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// The cache and the future that fills it (run it for the life of the process).
    pub fn new(spec: CacheSpec<K>) -> (Self, impl Future<Output = Result<(), String>> + Send) {
        let (reader, writer) = reflector::store::<K>();
        let (ready_tx, ready_rx) = watch::channel(false);
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let cache = Self {
            name: spec.name.clone(),
            store: reader.clone(),
            ready: ready_rx,
            changes: changes.clone(),
        };
        let driver = drive(spec, reader, writer, ready_tx, changes);
        (cache, driver)
    }
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
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

    /// Every object in the cache now, then every object as it changes (a deleted object is
    /// delivered once more as it was last seen). When a reader falls more than the change
    /// buffer behind, it gets the whole cache again (nothing is lost).
    pub fn triggers(&self) -> impl Stream<Item = Arc<K>> + Send + 'static
    where
        K: Send + Sync,
    {
        let changes = self.changes();
        let snapshot = self.store.state();
        futures::stream::iter(snapshot).chain(changes)
    }

    /// Every object as it changes from now on, as [`Cache::triggers`] delivers them but
    /// without the objects already in the cache: for a reader that looks at the cache
    /// whenever another stream wakes it, and only needs to hear of later changes.
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + 'static
    where
        K: Send + Sync,
    {
        let receiver = self.changes.subscribe();
        let store = self.store.clone();
        futures::stream::unfold((receiver, store), |(mut receiver, store)| async move {
            loop {
                match receiver.recv().await {
                    Ok(Change::Applied(reference)) => {
                        if let Some(object) = store.get(&reference) {
                            return Some((vec![object], (receiver, store)));
                        }
                    }
                    Ok(Change::Deleted(object)) => {
                        return Some((vec![object], (receiver, store)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let all = store.state();
                        return Some((all, (receiver, store)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .flat_map(futures::stream::iter)
    }
}

async fn drive<K>(
    spec: CacheSpec<K>,
    reader: Store<K>,
    mut writer: reflector::store::Writer<K>,
    ready: watch::Sender<bool>,
    changes: broadcast::Sender<Change<K>>,
) -> Result<(), String>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
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
    writer.apply_watcher_event(&Event::Init);
    while let Some((scope, event)) = merged.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(cache = %name, error = %err, "watch failed; retrying with backoff");
                continue;
            }
        };
        let was_ready = merger.ready;
        for out in merger.translate(scope, event, &reader) {
            writer.apply_watcher_event(&out);
            match &out {
                Event::Apply(object) | Event::InitApply(object) => {
                    for hook in &hooks {
                        hook.apply(CacheChange::Upsert(object));
                    }
                    if merger.ready {
                        let _ = changes.send(Change::Applied(ObjectRef::from_obj(object)));
                    }
                }
                Event::Delete(object) => {
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
            info!(cache = %name, objects = reader.len(), "cache synced");
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
    K: Resource<DynamicType = ()> + Clone,
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
            let reference = ObjectRef::from_obj(&object);
            self.early_deletes
                .retain(|d| ObjectRef::from_obj(d) != reference);
        }
        if self.ready {
            Event::Apply(object)
        } else {
            Event::InitApply(object)
        }
    }

    fn in_scope(&self, scope: usize, object: &K) -> bool {
        match self.scopes.get(scope) {
            Some(Some(namespace)) => object.meta().namespace.as_deref() == Some(namespace),
            _ => true,
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
                    seen.insert(ObjectRef::from_obj(&object));
                }
                vec![self.upsert(object)]
            }
            Event::InitDone => {
                let seen = self.relisting[scope].take().unwrap_or_default();
                let mut out: Vec<Event<K>> = Vec::new();
                if self.ready {
                    out.extend(
                        store
                            .state()
                            .into_iter()
                            .filter(|object| self.in_scope(scope, object))
                            .filter(|object| !seen.contains(&ObjectRef::from_obj(object.as_ref())))
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
        let (reader, mut writer) = reflector::store::<ConfigMap>();
        let mut merger = Merger::new(vec![Some("a".to_string()), Some("b".to_string())]);
        writer.apply_watcher_event(&Event::Init);
        let mut run = |merger: &mut Merger<ConfigMap>, scope, event| {
            let out = merger.translate(scope, event, &reader);
            for e in &out {
                writer.apply_watcher_event(e);
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
