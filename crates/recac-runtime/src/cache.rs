//! Shared, warm caches: one watch per kind and scope, started once per process and read by every
//! component that needs the kind.
//!
//! A cache outlives the components' terms: a standby keeps it warm, so a new term starts
//! writing without a cold list. Each term subscribes ([`Cache::subscribe`] and the streams
//! built on it): every object in the cache at that moment, then every change as it is applied.
//!
//! A cache may span several namespaces (one watch each). Their events are merged into one
//! store; a scope's list (the first or any later one) removes that scope's objects it did not
//! list, so an object deleted while a list failed part-way and started again leaves no ghost.
//! Indexes that must follow the cache event by event (see [`CacheHook`]) are fed from the
//! same merged stream, so they never disagree with the store for long.
//!
//! # Readers
//!
//! Each reader has its own inbox: one entry per object with news pending, in the order the
//! news came. A later change of the same object joins its entry; a deletion keeps the deleted
//! object itself in the entry (owners react to what was deleted). So a reader that is slow, or
//! not reading at all, holds at most one entry per object and still hears of every deletion;
//! nothing is ever dropped and the cache never waits for a reader. A reader subscribes
//! before it reads the snapshot of the store, so a change applied in between is in its inbox.
//!
//! # Why not kube-runtime's reflector
//!
//! `reflector::store_shared` with `Controller::for_shared_stream` gives the same guarantees
//! with less code of our own, but keeps every object decoded. Measured by the
//! `store_memory` benchmark (`make bench`), 10,000 AgentTasks and their 10,000 Jobs (as the
//! slim [`crate::kinds::CachedJob`]) take 37.3 MiB decoded, one `Arc` per object, and
//! 3.6 MiB in our compressed [`crate::store`] (a read decodes in about 5 µs). The HA
//! benchmark's leader holds both caches at 37.6 MiB resident: on the reflector it would
//! need about 34 MiB more, past the 64 MiB a replica with 10,000 tasks may use. So the
//! compressed store stays, and with it this module and the runner (which also coalesces
//! the triggers of several caches per object); `tests/cache_faults.rs` and this module's
//! tests hold them to the reflector's guarantees under faults.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::store::{Lookup, Store};

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

/// What a reader hears of one object.
pub enum Notice<K: Resource<DynamicType = ()>> {
    /// The object was added or changed: read it from the store (it may have changed again,
    /// or gone, since; a later notice says so).
    Applied(ObjectRef<K>),
    /// The object was deleted; this is how it last looked.
    Deleted(Arc<K>),
}

impl<K: Resource<DynamicType = ()>> Notice<K> {
    /// The reference of the object the notice is about.
    pub fn reference(&self) -> ObjectRef<K> {
        match self {
            Notice::Applied(reference) => reference.clone(),
            Notice::Deleted(object) => reference_to(object.as_ref()),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Clone for Notice<K> {
    fn clone(&self) -> Self {
        match self {
            Notice::Applied(r) => Notice::Applied(r.clone()),
            Notice::Deleted(o) => Notice::Deleted(o.clone()),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Debug for Notice<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Applied(r) => write!(f, "Applied({r})"),
            Notice::Deleted(o) => write!(f, "Deleted({})", reference_to(o.as_ref())),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The news one object has for one reader.
struct PendingNews<K> {
    /// Deleted versions, oldest first (more than one if it was deleted and created again).
    deleted: Vec<Arc<K>>,
    /// Whether it was applied after its last deletion.
    applied: bool,
}

struct InboxState<K: Resource<DynamicType = ()>> {
    order: VecDeque<ObjectRef<K>>,
    news: HashMap<ObjectRef<K>, PendingNews<K>>,
}

/// One reader's pending notices, coalesced per object.
struct Inbox<K: Resource<DynamicType = ()>> {
    state: Mutex<InboxState<K>>,
    wake: Notify,
    closed: AtomicBool,
}

impl<K: Resource<DynamicType = ()>> Inbox<K> {
    fn new() -> Self {
        Self {
            state: Mutex::new(InboxState {
                order: VecDeque::new(),
                news: HashMap::new(),
            }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn push(&self, notice: Notice<K>) {
        {
            let mut state = lock(&self.state);
            let InboxState { order, news } = &mut *state;
            let pending = match news.entry(notice.reference()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    order.push_back(entry.key().clone());
                    entry.insert(PendingNews {
                        deleted: Vec::new(),
                        applied: false,
                    })
                }
            };
            match notice {
                Notice::Applied(_) => pending.applied = true,
                Notice::Deleted(object) => {
                    pending.applied = false;
                    pending.deleted.push(object);
                }
            }
        }
        self.wake.notify_one();
    }

    /// The notices of the object whose news is oldest.
    fn pop(&self) -> Option<Vec<Notice<K>>> {
        let mut state = lock(&self.state);
        let reference = state.order.pop_front()?;
        let pending = state.news.remove(&reference)?;
        if crate::runner::oversized(state.news.capacity(), state.news.len()) {
            let len = state.news.len();
            state.news.shrink_to(len * 2);
            state.order.shrink_to(len * 2);
        }
        let mut notices: Vec<Notice<K>> =
            pending.deleted.into_iter().map(Notice::Deleted).collect();
        if pending.applied {
            notices.push(Notice::Applied(reference));
        }
        Some(notices)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Every notice as it comes, until the cache ends.
    fn stream(self: Arc<Self>) -> impl Stream<Item = Notice<K>> + Send + 'static
    where
        K: Send + Sync + 'static,
    {
        futures::stream::unfold(self, |inbox| async move {
            loop {
                if let Some(notices) = inbox.pop() {
                    return Some((notices, inbox));
                }
                if inbox.closed.load(Ordering::SeqCst) {
                    return None;
                }
                inbox.wake.notified().await;
            }
        })
        .flat_map(futures::stream::iter)
    }
}

/// Every reader's inbox.
struct Readers<K: Resource<DynamicType = ()>> {
    inboxes: Mutex<Vec<Weak<Inbox<K>>>>,
    closed: AtomicBool,
}

impl<K: Resource<DynamicType = ()>> Readers<K> {
    fn register(&self, inbox: &Arc<Inbox<K>>) {
        let mut inboxes = lock(&self.inboxes);
        if self.closed.load(Ordering::SeqCst) {
            inbox.close();
        }
        inboxes.retain(|i| i.strong_count() > 0);
        inboxes.push(Arc::downgrade(inbox));
    }

    fn publish(&self, notice: &Notice<K>) {
        let inboxes = lock(&self.inboxes);
        for inbox in inboxes.iter().filter_map(Weak::upgrade) {
            inbox.push(notice.clone());
        }
    }

    fn close(&self) {
        let inboxes = lock(&self.inboxes);
        self.closed.store(true, Ordering::SeqCst);
        for inbox in inboxes.iter().filter_map(Weak::upgrade) {
            inbox.close();
        }
    }
}

/// A warm cache of one kind.
pub struct Cache<K>
where
    K: Resource<DynamicType = ()> + 'static,
{
    name: String,
    store: Store<K>,
    ready: watch::Receiver<bool>,
    readers: Arc<Readers<K>>,
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
            readers: self.readers.clone(),
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
        let streams = apis.into_iter().enumerate().map(move |(scope, api)| {
            watch_stream(api, watch.clone())
                .default_backoff()
                .modify(strip)
                .map(move |event| (scope, event))
                .boxed()
        });
        Self::from_events(name, scopes, futures::stream::select_all(streams), hooks)
    }

    /// A cache filled from `events`: each a scope's index in `scopes` and what its watcher
    /// said (for tests that play a watcher's events).
    pub fn from_events<E: std::fmt::Display>(
        name: String,
        scopes: Vec<Option<String>>,
        events: impl Stream<Item = (usize, Result<Event<K>, E>)> + Send + Unpin,
        hooks: Vec<Arc<dyn CacheHook<K>>>,
    ) -> (Self, impl Future<Output = Result<(), String>> + Send) {
        let store = Store::default();
        let (ready_tx, ready_rx) = watch::channel(false);
        let readers = Arc::new(Readers {
            inboxes: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        let cache = Self {
            name: name.clone(),
            store: store.clone(),
            ready: ready_rx,
            readers: readers.clone(),
        };
        let writer = Writer {
            name,
            store,
            hooks,
            readers,
        };
        (cache, drive(writer, scopes, events, ready_tx))
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
    /// An `Applied` notice for every object in the cache now, then a notice of every change
    /// as it is applied, coalesced per object while the reader is busy (see the module
    /// docs). The stream ends only when the cache's driver ends.
    pub fn subscribe(&self) -> impl Stream<Item = Notice<K>> + Send + 'static {
        self.inbox(true).stream()
    }

    /// Notices of the changes from now on, without the objects already in the cache.
    pub fn subscribe_to_changes(&self) -> impl Stream<Item = Notice<K>> + Send + 'static {
        self.inbox(false).stream()
    }

    fn inbox(&self, with_snapshot: bool) -> Arc<Inbox<K>> {
        let inbox = Arc::new(Inbox::new());
        self.readers.register(&inbox);
        #[cfg(test)]
        seams::between_subscription_and_snapshot();
        if with_snapshot {
            for reference in self.store.refs() {
                inbox.push(Notice::Applied(reference));
            }
        }
        inbox
    }

    /// Every object in the cache now, then every object as it changes (a deleted object is
    /// delivered once more as it was last seen), read from the store as the reader takes
    /// them.
    pub fn triggers(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.read(self.subscribe())
    }

    /// Every object as it changes from now on, as [`Cache::triggers`] delivers them but
    /// without the objects already in the cache: for a reader that looks at the cache
    /// whenever another stream wakes it, and only needs to hear of later changes.
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.read(self.subscribe_to_changes())
    }

    /// References to what [`Cache::triggers`] delivers, without reading the objects: for a
    /// runner that reads each object when its reconcile starts.
    pub fn trigger_refs(&self) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
        self.subscribe().map(|notice| notice.reference())
    }

    fn read(
        &self,
        notices: impl Stream<Item = Notice<K>> + Send + 'static,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let store = self.store.clone();
        let cache = self.name.clone();
        notices.filter_map(move |notice| {
            futures::future::ready(match notice {
                Notice::Applied(reference) => match store.lookup(&reference) {
                    Lookup::Found(object) => Some(object),
                    // Deleted since: its Deleted notice follows.
                    Lookup::Missing => None,
                    Lookup::Unreadable(err) => {
                        error!(cache = %cache, object = %reference, error = %err, "a cached object cannot be read; its change is not delivered");
                        None
                    }
                },
                Notice::Deleted(object) => Some(object),
            })
        })
    }
}

/// What applies a cache's events: the store, the hooks and the readers' inboxes.
struct Writer<K: Resource<DynamicType = ()>> {
    name: String,
    store: Store<K>,
    hooks: Vec<Arc<dyn CacheHook<K>>>,
    readers: Arc<Readers<K>>,
}

impl<K: CachedKind> Writer<K> {
    fn apply(&self, object: &K) {
        self.store.upsert(object);
        for hook in &self.hooks {
            hook.apply(CacheChange::Upsert(object));
        }
        self.readers.publish(&Notice::Applied(reference_to(object)));
    }

    fn delete(&self, object: K) {
        self.store.remove(&reference_to(&object));
        for hook in &self.hooks {
            hook.apply(CacheChange::Delete(&object));
        }
        self.readers.publish(&Notice::Deleted(Arc::new(object)));
    }
}

impl<K: Resource<DynamicType = ()>> Drop for Writer<K> {
    fn drop(&mut self) {
        self.readers.close();
    }
}

async fn drive<K, E>(
    writer: Writer<K>,
    scopes: Vec<Option<String>>,
    mut events: impl Stream<Item = (usize, Result<Event<K>, E>)> + Send + Unpin,
    ready: watch::Sender<bool>,
) -> Result<(), String>
where
    K: CachedKind,
    E: std::fmt::Display,
{
    let mut merger = Merger::new(scopes);
    while let Some((scope, event)) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(cache = %writer.name, error = %err, "watch failed; retrying with backoff");
                continue;
            }
        };
        let was_ready = merger.ready;
        for out in merger.translate(scope, event, &writer.store) {
            match out {
                Event::Apply(object) | Event::InitApply(object) => writer.apply(&object),
                Event::Delete(object) => writer.delete(object),
                Event::Init | Event::InitDone => {}
            }
        }
        if merger.ready && !was_ready {
            info!(cache = %writer.name, objects = writer.store.len(), "cache synced");
            let _ = ready.send(true);
        }
    }
    Err("its watch stream ended".into())
}

/// Merges the watch events of several scopes into the events of one store.
///
/// The store sees `Apply` and `Delete` only, and one `InitDone` once every scope has been
/// listed. Every list of a scope (its first, a relist after 410 Gone, or a list started again
/// after failing part-way) becomes `Apply` for what it lists and, when it completes,
/// `Delete` for the objects of that scope the store has but the list did not, so the other
/// scopes' objects stay and no object deleted between two lists stays behind.
struct Merger<K: Resource<DynamicType = ()>> {
    ready: bool,
    /// Each scope's namespace (`None`: every namespace).
    scopes: Vec<Option<String>>,
    listed: Vec<bool>,
    /// What each scope's list under way has listed so far.
    listing: Vec<Option<HashSet<ObjectRef<K>>>>,
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
            listing: (0..n).map(|_| None).collect(),
        }
    }

    fn translate(&mut self, scope: usize, event: Event<K>, store: &Store<K>) -> Vec<Event<K>> {
        match event {
            Event::Init => {
                if let Some(listing) = self.listing.get_mut(scope) {
                    *listing = Some(HashSet::new());
                }
                Vec::new()
            }
            Event::InitApply(object) => {
                if let Some(Some(seen)) = self.listing.get_mut(scope) {
                    seen.insert(reference_to(&object));
                }
                vec![Event::Apply(object)]
            }
            Event::InitDone => {
                let seen = self
                    .listing
                    .get_mut(scope)
                    .and_then(Option::take)
                    .unwrap_or_default();
                let cached = match self.scopes.get(scope) {
                    Some(Some(namespace)) => store.refs_in(namespace),
                    _ => store.refs(),
                };
                let mut out: Vec<Event<K>> = cached
                    .into_iter()
                    .filter(|reference| !seen.contains(reference))
                    .filter_map(|reference| gone_object(store, reference))
                    .map(Event::Delete)
                    .collect();
                if let Some(listed) = self.listed.get_mut(scope) {
                    *listed = true;
                }
                if !self.ready && self.listed.iter().all(|l| *l) {
                    self.ready = true;
                    out.push(Event::InitDone);
                }
                out
            }
            Event::Apply(object) => vec![Event::Apply(object)],
            Event::Delete(object) => vec![Event::Delete(object)],
        }
    }
}

/// The last state of an object a list no longer has, for its `Delete`. A cached copy that
/// cannot be read is removed from the store here (hooks and readers cannot be told what it
/// was; the error says which object went).
fn gone_object<K>(store: &Store<K>, reference: ObjectRef<K>) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned,
{
    match store.lookup(&reference) {
        Lookup::Found(object) => Some((*object).clone()),
        Lookup::Missing => None,
        Lookup::Unreadable(err) => {
            error!(object = %reference, error = %err, "an object the list no longer has cannot be read; it is removed without notice");
            store.remove(&reference);
            None
        }
    }
}

#[cfg(test)]
mod seams {
    use std::cell::RefCell;

    thread_local! {
        static BETWEEN: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    /// Runs `action` the next time a reader of this thread has subscribed and not yet read
    /// the store's snapshot.
    pub fn on_next_subscription(action: impl FnOnce() + 'static) {
        BETWEEN.with(|b| *b.borrow_mut() = Some(Box::new(action)));
    }

    pub fn between_subscription_and_snapshot() {
        if let Some(action) = BETWEEN.with(|b| b.borrow_mut().take()) {
            action();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use tokio::sync::mpsc;

    type Played = (usize, Result<Event<ConfigMap>, String>);

    fn object(ns: &str, name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.into());
        cm.metadata.name = Some(name.into());
        cm.metadata.uid = Some(format!("{ns}-{name}"));
        cm
    }

    /// A cache of the scopes `namespaces`, fed by the events sent to the returned sender.
    fn played_cache(namespaces: &[&str]) -> (Cache<ConfigMap>, mpsc::UnboundedSender<Played>) {
        let (tx, rx) = mpsc::unbounded_channel::<Played>();
        let events = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        })
        .boxed();
        let scopes = namespaces.iter().map(|n| Some(n.to_string())).collect();
        let (cache, driver) = Cache::from_events("configmaps".into(), scopes, events, Vec::new());
        tokio::spawn(driver);
        (cache, tx)
    }

    async fn play(
        tx: &mpsc::UnboundedSender<Played>,
        cache: &Cache<ConfigMap>,
        events: Vec<Played>,
    ) {
        for event in events {
            tx.send(event).expect("the cache runs");
        }
        // The driver has applied everything sent once a marker object shows up.
        let marker = object("marker", &format!("m{}", rand::random::<u32>()));
        tx.send((0, Ok(Event::Apply(marker.clone()))))
            .expect("the cache runs");
        while cache.store().get(&reference_to(&marker)).is_none() {
            tokio::task::yield_now().await;
        }
        tx.send((0, Ok(Event::Delete(marker.clone()))))
            .expect("the cache runs");
        while cache.store().get(&reference_to(&marker)).is_some() {
            tokio::task::yield_now().await;
        }
    }

    fn names(cache: &Cache<ConfigMap>) -> Vec<String> {
        let mut names: Vec<String> = cache
            .store()
            .state()
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        names.sort();
        names
    }

    fn ok(event: Event<ConfigMap>) -> Result<Event<ConfigMap>, String> {
        Ok(event)
    }

    #[tokio::test]
    async fn a_first_list_that_fails_part_way_leaves_no_ghost() {
        let (cache, tx) = played_cache(&["a"]);
        play(
            &tx,
            &cache,
            vec![
                (0, ok(Event::Init)),
                (0, ok(Event::InitApply(object("a", "1")))),
                (0, ok(Event::InitApply(object("a", "2")))),
                (0, ok(Event::InitApply(object("a", "3")))),
                (0, ok(Event::InitApply(object("a", "4")))),
                (0, Err("the third page failed".into())),
                // a/1 was deleted before the list started again.
                (0, ok(Event::Init)),
                (0, ok(Event::InitApply(object("a", "2")))),
                (0, ok(Event::InitApply(object("a", "3")))),
                (0, ok(Event::InitApply(object("a", "4")))),
                (0, ok(Event::InitApply(object("a", "5")))),
                (0, ok(Event::InitDone)),
            ],
        )
        .await;
        assert!(cache.is_ready());
        assert_eq!(names(&cache), ["a/2", "a/3", "a/4", "a/5"]);
    }

    #[tokio::test]
    async fn two_scopes_become_one_store_and_a_relist_keeps_the_other_scope() {
        let (cache, tx) = played_cache(&["a", "b"]);
        play(
            &tx,
            &cache,
            vec![
                (0, ok(Event::Init)),
                (0, ok(Event::InitApply(object("a", "1")))),
                (0, ok(Event::InitDone)),
            ],
        )
        .await;
        assert!(!cache.is_ready(), "scope b is not listed yet");
        play(
            &tx,
            &cache,
            vec![
                (0, ok(Event::Delete(object("a", "1")))),
                (1, ok(Event::Init)),
                (1, ok(Event::InitApply(object("b", "1")))),
                (1, ok(Event::InitDone)),
                (0, ok(Event::Apply(object("a", "2")))),
                (0, ok(Event::Apply(object("a", "3")))),
            ],
        )
        .await;
        assert!(cache.is_ready());
        assert_eq!(names(&cache), ["a/2", "a/3", "b/1"]);
        // Scope a relists and no longer has a/2: only a/2 goes; b/1 stays.
        play(
            &tx,
            &cache,
            vec![
                (0, ok(Event::Init)),
                (0, ok(Event::InitApply(object("a", "3")))),
                (0, ok(Event::InitDone)),
            ],
        )
        .await;
        assert_eq!(names(&cache), ["a/3", "b/1"]);
    }

    /// Reads every notice available within a short wait.
    async fn drain(
        notices: &mut (impl Stream<Item = Notice<ConfigMap>> + Unpin),
    ) -> Vec<Notice<ConfigMap>> {
        let mut out = Vec::new();
        while let Ok(Some(notice)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), notices.next()).await
        {
            out.push(notice);
        }
        out
    }

    #[tokio::test]
    async fn a_change_applied_between_subscription_and_snapshot_is_delivered() {
        let (cache, tx) = played_cache(&["a"]);
        play(
            &tx,
            &cache,
            vec![
                (0, ok(Event::Init)),
                (0, ok(Event::InitApply(object("a", "1")))),
                (0, ok(Event::InitDone)),
            ],
        )
        .await;
        // The change lands in the store while the reader subscribes (as at a failover, when
        // a term starts while the watch applies events).
        let writer_store = cache.store();
        let late = object("a", "late");
        let readers = cache.readers.clone();
        seams::on_next_subscription(move || {
            writer_store.upsert(&late);
            readers.publish(&Notice::Applied(reference_to(&late)));
        });
        let mut reader = Box::pin(cache.subscribe());
        let seen: HashSet<String> = drain(&mut reader)
            .await
            .iter()
            .map(|n| n.reference().name)
            .collect();
        assert_eq!(seen, HashSet::from(["1".to_string(), "late".to_string()]));
    }

    #[tokio::test]
    async fn a_reader_held_back_hears_of_every_deletion_and_each_object_once() {
        const OBJECTS: usize = 3_000;
        let (cache, tx) = played_cache(&["a"]);
        play(
            &tx,
            &cache,
            vec![(0, ok(Event::Init)), (0, ok(Event::InitDone))],
        )
        .await;
        let mut held_back = Box::pin(cache.subscribe());
        let mut events = Vec::new();
        for i in 0..OBJECTS {
            events.push((0, ok(Event::Apply(object("a", &format!("o{i}"))))));
            events.push((0, ok(Event::Apply(object("a", &format!("o{i}"))))));
        }
        for i in 0..OBJECTS {
            events.push((0, ok(Event::Delete(object("a", &format!("o{i}"))))));
        }
        // One object comes back after its deletion.
        events.push((0, ok(Event::Apply(object("a", "o7")))));
        play(&tx, &cache, events).await;

        let notices = drain(&mut held_back).await;
        let deleted: HashSet<String> = notices
            .iter()
            .filter_map(|n| match n {
                Notice::Deleted(o) => Some(o.name_any()),
                Notice::Applied(_) => None,
            })
            .filter(|name| name.starts_with('o'))
            .collect();
        assert_eq!(deleted.len(), OBJECTS, "every deletion is heard");
        let applied: Vec<String> = notices
            .iter()
            .filter_map(|n| match n {
                Notice::Applied(r) => Some(r.name.clone()),
                Notice::Deleted(_) => None,
            })
            .filter(|name| name.starts_with('o'))
            .collect();
        assert_eq!(applied, ["o7"], "o7 came back after its deletion");
        let positions: Vec<usize> = notices
            .iter()
            .enumerate()
            .filter(|(_, n)| n.reference().name == "o7")
            .map(|(i, _)| i)
            .collect();
        assert!(
            matches!(notices[positions[0]], Notice::Deleted(_))
                && matches!(notices[positions[1]], Notice::Applied(_)),
            "o7's deletion comes before its return"
        );
        assert!(
            cache.readers.inboxes.lock().map(|i| i.len()).unwrap_or(0) >= 1,
            "the reader is still registered"
        );
    }

    #[tokio::test]
    async fn readers_end_when_the_cache_ends() {
        let (cache, tx) = played_cache(&["a"]);
        play(
            &tx,
            &cache,
            vec![(0, ok(Event::Init)), (0, ok(Event::InitDone))],
        )
        .await;
        let reader = cache.subscribe();
        drop(tx);
        let all: Vec<Notice<ConfigMap>> = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            reader.collect::<Vec<_>>(),
        )
        .await
        .expect("the stream ends");
        assert!(all.is_empty());
        let after: Vec<Notice<ConfigMap>> = cache.subscribe().collect().await;
        assert!(after.is_empty(), "a reader of an ended cache ends at once");
    }
}
