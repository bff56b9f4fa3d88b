//! Runs a controller's reconciles over a [`Store`]: one reconcile at a time per object, at
//! most `concurrency` at once, each object's triggers within the debounce window coalesced
//! into one reconcile, and a reconcile's requeue kept until it is due.
//!
//! The work queue gives memory back when it drains: a term starts by queueing every cached
//! object, and tables sized for that moment would otherwise stay allocated for the term.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::debug;

use crate::store::Store;

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `duration`, unless a change triggers it sooner.
    pub const fn requeue(duration: Duration) -> Self {
        Self {
            requeue_after: Some(duration),
        }
    }

    /// Reconcile again only when a change triggers it.
    pub const fn await_change() -> Self {
        Self {
            requeue_after: None,
        }
    }

    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// How a [`run`] schedules its reconciles.
#[derive(Clone, Copy, Debug)]
pub struct RunnerConfig {
    /// Reconciles running at once (at least one).
    pub concurrency: usize,
    /// How long a trigger waits, so that a burst of changes to one object becomes one
    /// reconcile.
    pub debounce: Duration,
}

/// The scheduling state of a run, without the I/O: which objects are due when, which are
/// ready, which are running, and which must run again when their reconcile ends.
pub struct WorkQueue<T> {
    due: BTreeMap<(Instant, u64), T>,
    timers: HashMap<T, (Instant, u64)>,
    ready: VecDeque<T>,
    queued: HashSet<T>,
    running: HashSet<T>,
    /// Objects triggered while running, with the earliest time asked for.
    again: HashMap<T, Instant>,
    sequence: u64,
}

impl<T: Clone + Eq + Hash> Default for WorkQueue<T> {
    fn default() -> Self {
        Self {
            due: BTreeMap::new(),
            timers: HashMap::new(),
            ready: VecDeque::new(),
            queued: HashSet::new(),
            running: HashSet::new(),
            again: HashMap::new(),
            sequence: 0,
        }
    }
}

impl<T: Clone + Eq + Hash> WorkQueue<T> {
    /// Asks for a reconcile of `key` at `at`; the earliest of the times asked for wins.
    pub fn schedule(&mut self, key: T, at: Instant) {
        if self.queued.contains(&key) {
            return;
        }
        if self.running.contains(&key) {
            let entry = self.again.entry(key).or_insert(at);
            *entry = (*entry).min(at);
            return;
        }
        if let Some(&(when, sequence)) = self.timers.get(&key) {
            if when <= at {
                return;
            }
            self.due.remove(&(when, sequence));
        }
        self.sequence += 1;
        self.due.insert((at, self.sequence), key.clone());
        self.timers.insert(key, (at, self.sequence));
    }

    /// Moves every object due at `now` to the ready queue.
    pub fn release_due(&mut self, now: Instant) {
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.timers.remove(&key);
            if self.queued.insert(key.clone()) {
                self.ready.push_back(key);
            }
        }
    }

    /// When the next timer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.first_key_value().map(|((at, _), _)| *at)
    }

    /// The next ready object, marked running, while fewer than `limit` run.
    pub fn start_next(&mut self, limit: usize) -> Option<T> {
        if self.running.len() >= limit.max(1) {
            return None;
        }
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// Records the end of `key`'s reconcile and what it asked for next.
    pub fn finish(&mut self, key: &T, requeue_at: Option<Instant>) {
        self.running.remove(key);
        let again = self.again.remove(key);
        let next = match (again, requeue_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            self.schedule(key.clone(), at);
        }
        self.shrink();
    }

    /// Reconciles running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Objects waiting: ready, or with a timer.
    pub fn waiting(&self) -> usize {
        self.ready.len() + self.timers.len()
    }

    /// Gives back the memory of tables far larger than what they hold.
    fn shrink(&mut self) {
        if oversized(self.timers.capacity(), self.timers.len()) {
            self.timers.shrink_to(self.timers.len() * 2);
        }
        if oversized(self.queued.capacity(), self.queued.len()) {
            self.queued.shrink_to(self.queued.len() * 2);
        }
        if oversized(self.ready.capacity(), self.ready.len()) {
            self.ready.shrink_to(self.ready.len() * 2);
        }
        if oversized(self.again.capacity(), self.again.len()) {
            self.again.shrink_to(self.again.len() * 2);
        }
    }
}

/// Whether a table of `capacity` holding `len` entries is worth shrinking (to twice `len`):
/// amortised, shrinking while a burst drains costs O(1) per entry.
pub(crate) fn oversized(capacity: usize, len: usize) -> bool {
    capacity > 64 && capacity > len * 4
}

/// Runs reconciles of the objects `triggers` names until `stop` completes or `triggers`
/// ends, then waits for the reconciles under way. An object missing from `store` when its
/// turn comes is skipped (it was deleted). A failed reconcile is retried as `error_policy`
/// says. A reconcile that panics makes this function panic once the others have ended.
pub async fn run<K, C, E, Rec, RecFut, Policy>(
    store: Store<K>,
    triggers: impl Stream<Item = ObjectRef<K>> + Send,
    config: RunnerConfig,
    stop: impl Future<Output = ()> + Send,
    reconcile: Rec,
    error_policy: Policy,
    context: Arc<C>,
) where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + Send + Sync + 'static,
    C: Send + Sync + 'static,
    E: Display + Send + 'static,
    Rec: Fn(Arc<K>, Arc<C>) -> RecFut + Clone + Send + Sync + 'static,
    RecFut: Future<Output = Result<Action, E>> + Send + 'static,
    Policy: Fn(Arc<K>, &E, Arc<C>) -> Action + Clone + Send + Sync + 'static,
{
    let mut queue: WorkQueue<ObjectRef<K>> = WorkQueue::default();
    // Dropping the set (the run itself dropped) aborts the reconciles under way.
    let mut in_flight = tokio::task::JoinSet::new();
    let triggers = triggers.fuse();
    futures::pin_mut!(triggers, stop);
    let mut panic = None;
    loop {
        while let Some(key) = queue.start_next(config.concurrency) {
            let Some(object) = store.get(&key) else {
                queue.finish(&key, None);
                continue;
            };
            let reconcile = reconcile.clone();
            let error_policy = error_policy.clone();
            let context = context.clone();
            in_flight.spawn(async move {
                let action = match reconcile(object.clone(), context.clone()).await {
                    Ok(action) => action,
                    Err(err) => {
                        debug!(object = %key, error = %err, "reconcile failed");
                        error_policy(object, &err, context)
                    }
                };
                (key, action)
            });
        }
        let next_due = queue.next_due();
        tokio::select! {
            biased;
            () = &mut stop => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => match done {
                Ok((key, action)) => {
                    let at = action.requeue_after().map(|after| Instant::now() + after);
                    queue.finish(&key, at);
                }
                Err(err) if err.is_panic() => {
                    panic = Some(err.into_panic());
                    break;
                }
                Err(_) => {}
            },
            trigger = triggers.next() => match trigger {
                Some(key) => queue.schedule(key, Instant::now() + config.debounce),
                None => break,
            },
            () = sleep_until(next_due), if next_due.is_some() => {
                queue.release_due(Instant::now());
            }
        }
    }
    while let Some(done) = in_flight.join_next().await {
        if let Err(err) = done
            && err.is_panic()
            && panic.is_none()
        {
            panic = Some(err.into_panic());
        }
    }
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn triggers_within_the_window_become_one_run_at_the_earliest_time() {
        let base = Instant::now();
        let mut q = WorkQueue::default();
        q.schedule("a", at(base, 50));
        q.schedule("a", at(base, 80));
        q.schedule("a", at(base, 30));
        assert_eq!(q.next_due(), Some(at(base, 30)));
        q.release_due(at(base, 29));
        assert_eq!(q.start_next(4), None);
        q.release_due(at(base, 30));
        assert_eq!(q.start_next(4), Some("a"));
        assert_eq!(q.start_next(4), None);
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn an_object_runs_once_at_a_time_and_again_when_triggered_meanwhile() {
        let base = Instant::now();
        let mut q = WorkQueue::default();
        q.schedule("a", base);
        q.release_due(base);
        assert_eq!(q.start_next(4), Some("a"));
        q.schedule("a", at(base, 10));
        q.release_due(at(base, 10));
        assert_eq!(q.start_next(4), None, "a is still running");
        q.finish(&"a", Some(at(base, 500)));
        assert_eq!(q.next_due(), Some(at(base, 10)), "the earlier trigger wins");
        q.release_due(at(base, 10));
        assert_eq!(q.start_next(4), Some("a"));
        q.finish(&"a", None);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn concurrency_bounds_what_runs_and_order_is_kept() {
        let base = Instant::now();
        let mut q = WorkQueue::default();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            q.schedule(key, at(base, i as u64));
        }
        q.release_due(at(base, 5));
        assert_eq!(q.start_next(2), Some("a"));
        assert_eq!(q.start_next(2), Some("b"));
        assert_eq!(q.start_next(2), None);
        q.finish(&"a", None);
        assert_eq!(q.start_next(2), Some("c"));
        assert_eq!(q.running(), 2);
    }

    #[test]
    fn a_requeue_is_not_pushed_back_by_a_later_request() {
        let base = Instant::now();
        let mut q = WorkQueue::default();
        q.schedule("a", at(base, 100));
        q.schedule("a", at(base, 5_000));
        assert_eq!(q.next_due(), Some(at(base, 100)));
        assert_eq!(q.waiting(), 1);
    }

    #[test]
    fn tables_shrink_after_a_burst_drains() {
        let base = Instant::now();
        let mut q = WorkQueue::default();
        for i in 0..10_000u32 {
            q.schedule(i, base);
        }
        q.release_due(base);
        while let Some(key) = q.start_next(16) {
            q.finish(&key, None);
        }
        assert_eq!(q.waiting(), 0);
        assert!(q.queued.capacity() < 1_000, "{}", q.queued.capacity());
        assert!(q.timers.capacity() < 1_000, "{}", q.timers.capacity());
        assert!(q.ready.capacity() < 1_000, "{}", q.ready.capacity());
    }

    mod run {
        use super::super::*;
        use k8s_openapi::api::core::v1::ConfigMap;
        use std::sync::atomic::{AtomicUsize, Ordering};

        fn object(name: &str) -> ConfigMap {
            let mut cm = ConfigMap::default();
            cm.metadata.namespace = Some("ns".into());
            cm.metadata.name = Some(name.into());
            cm
        }

        fn store_of(names: &[&str]) -> Store<ConfigMap> {
            let store = Store::default();
            for name in names {
                store.upsert(&object(name));
            }
            store
        }

        /// `references`, then a stream that stays open.
        fn then_open(
            references: Vec<ObjectRef<ConfigMap>>,
        ) -> impl Stream<Item = ObjectRef<ConfigMap>> + Send {
            futures::stream::iter(references).chain(futures::stream::pending())
        }

        const ONE_AT_A_TIME: RunnerConfig = RunnerConfig {
            concurrency: 1,
            debounce: Duration::ZERO,
        };

        #[derive(Default)]
        struct Seen {
            runs: AtomicUsize,
            at_once: AtomicUsize,
            most_at_once: AtomicUsize,
        }

        /// A stop signal that fires `grace` after `seen` counts `runs` reconciles.
        fn stop_after(
            seen: &Arc<Seen>,
            runs: usize,
            grace: Duration,
        ) -> impl Future<Output = ()> + Send + use<> {
            let stop = tokio_util::sync::CancellationToken::new();
            let stopper = stop.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                while seen.runs.load(Ordering::SeqCst) < runs {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(grace).await;
                stopper.cancel();
            });
            stop.cancelled_owned()
        }

        #[tokio::test]
        async fn each_object_runs_once_within_the_concurrency_and_missing_ones_are_skipped() {
            let names: Vec<String> = (0..20).map(|i| format!("o{i}")).collect();
            let store = store_of(&names.iter().map(String::as_str).collect::<Vec<_>>());
            let mut triggers: Vec<ObjectRef<ConfigMap>> = store.refs();
            triggers.extend(store.refs());
            triggers.push(ObjectRef::new("gone").within("ns"));
            let seen = Arc::new(Seen::default());
            run(
                store,
                then_open(triggers),
                RunnerConfig {
                    concurrency: 3,
                    debounce: Duration::from_millis(10),
                },
                stop_after(&seen, 20, Duration::from_millis(100)),
                |_object: Arc<ConfigMap>, seen: Arc<Seen>| async move {
                    let now = seen.at_once.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.most_at_once.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    seen.at_once.fetch_sub(1, Ordering::SeqCst);
                    seen.runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                seen.clone(),
            )
            .await;
            assert_eq!(seen.runs.load(Ordering::SeqCst), 20);
            assert_eq!(seen.most_at_once.load(Ordering::SeqCst), 3);
        }

        #[tokio::test]
        async fn a_failed_reconcile_is_retried_as_the_error_policy_says() {
            let store = store_of(&["o"]);
            let seen = Arc::new(Seen::default());
            run(
                store.clone(),
                then_open(store.refs()),
                ONE_AT_A_TIME,
                stop_after(&seen, 3, Duration::ZERO),
                |_object: Arc<ConfigMap>, seen: Arc<Seen>| async move {
                    seen.runs.fetch_add(1, Ordering::SeqCst);
                    Err::<Action, _>("not yet")
                },
                |_, _, _| Action::requeue(Duration::from_millis(10)),
                seen.clone(),
            )
            .await;
            assert!(seen.runs.load(Ordering::SeqCst) >= 3);
        }

        #[tokio::test]
        async fn dropping_the_run_aborts_the_reconciles_under_way() {
            let store = store_of(&["o"]);
            let seen = Arc::new(Seen::default());
            let run = run(
                store.clone(),
                then_open(store.refs()),
                ONE_AT_A_TIME,
                futures::future::pending(),
                |_object: Arc<ConfigMap>, seen: Arc<Seen>| async move {
                    seen.at_once.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    seen.runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                seen.clone(),
            );
            assert!(
                tokio::time::timeout(Duration::from_millis(50), run)
                    .await
                    .is_err()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                seen.at_once.load(Ordering::SeqCst),
                1,
                "the reconcile started"
            );
            assert_eq!(seen.runs.load(Ordering::SeqCst), 0, "and was aborted");
        }

        #[tokio::test]
        #[should_panic(expected = "reconcile blew up")]
        async fn a_panicking_reconcile_makes_the_run_panic() {
            let store = store_of(&["o"]);
            run(
                store.clone(),
                then_open(store.refs()),
                ONE_AT_A_TIME,
                futures::future::pending(),
                |_object: Arc<ConfigMap>, _ctx: Arc<()>| async move {
                    if true {
                        panic!("reconcile blew up");
                    }
                    Ok::<_, std::convert::Infallible>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                Arc::new(()),
            )
            .await;
        }
    }
}
