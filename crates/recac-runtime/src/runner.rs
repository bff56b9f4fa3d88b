//! Runs a controller's reconciles over a [`Store`]: one reconcile at a time per object, at
//! most `concurrency` at once, each object's triggers within the debounce window coalesced
//! into one reconcile, and a reconcile's requeue kept until it is due.
//!
//! A failed reconcile is retried after an exponential backoff kept per object (reset by a
//! success), or later if the controller's error policy asks for more (a `Retry-After`).
//! An object the store cannot read (see [`crate::store::Lookup::Unreadable`]) is retried
//! the same way and counted as an error with reason `Unreadable`, never taken for deleted.
//! Each reconcile runs in a `reconcile` span naming the controller and the object, and is
//! counted in the [`ReconcileMetrics`].
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
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{Instrument, error, info_span};

use crate::metrics::MetricsRegistry;
use crate::store::{Lookup, Store};

/// Why a reconcile failed, as a short stable word for the `reason` label of
/// `recac_reconcile_errors_total` (a variant name: `Kubernetes`, `Jira`, …).
pub trait ErrorReason {
    fn reason(&self) -> &'static str;
}

impl ErrorReason for std::convert::Infallible {
    fn reason(&self) -> &'static str {
        match *self {}
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    reason: &'static str,
}

type DurationFamily = Family<ControllerLabel, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every controller's reconcile metrics, labelled by controller: registered once per
/// process, shared by every runner.
#[derive(Clone)]
pub struct ReconcileMetrics {
    reconciles: Family<ControllerLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: DurationFamily,
    waiting: Family<ControllerLabel, Gauge>,
    running: Family<ControllerLabel, Gauge>,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            waiting: Family::default(),
            running: Family::default(),
        }
    }
}

impl ReconcileMetrics {
    /// Registers `recac_reconciles_total`, `recac_reconcile_errors_total`,
    /// `recac_reconcile_duration_seconds`, `recac_reconcile_queue_depth` and
    /// `recac_reconciles_running` in `registry`.
    pub fn register(registry: &MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "recac_reconciles",
            "Reconciles run, by controller.",
            metrics.reconciles.clone(),
        );
        registry.register(
            "recac_reconcile_errors",
            "Failed reconciles, by controller and reason (Unreadable: the cached object could not be read).",
            metrics.errors.clone(),
        );
        registry.register(
            "recac_reconcile_duration_seconds",
            "How long reconciles take, by controller.",
            metrics.duration.clone(),
        );
        registry.register(
            "recac_reconcile_queue_depth",
            "Objects waiting for a reconcile (due now or later: debounced, requeued or backing off), by controller.",
            metrics.waiting.clone(),
        );
        registry.register(
            "recac_reconciles_running",
            "Reconciles under way, by controller.",
            metrics.running.clone(),
        );
        metrics
    }

    /// Reconciles run so far by `controller`.
    pub fn reconciles(&self, controller: &'static str) -> u64 {
        self.reconciles
            .get_or_create(&ControllerLabel { controller })
            .get()
    }

    /// Failed reconciles of `controller` so far, for `reason`.
    pub fn errors(&self, controller: &'static str, reason: &'static str) -> u64 {
        self.errors
            .get_or_create(&ErrorLabels { controller, reason })
            .get()
    }

    fn failed(&self, controller: &'static str, reason: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { controller, reason })
            .inc();
    }

    fn queue(&self, controller: &'static str, waiting: usize, running: usize) {
        let label = ControllerLabel { controller };
        self.waiting
            .get_or_create(&label)
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        self.running
            .get_or_create(&label)
            .set(i64::try_from(running).unwrap_or(i64::MAX));
    }
}

/// How long an object waits after consecutive failed reconciles: `first`, doubling per
/// failure up to `max`, each wait stretched by up to a tenth at random so that objects that
/// failed together do not all retry together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `failures`-th consecutive failure (1 for the first).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let base = self
            .first
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max);
        let jitter = base.mul_f64(rand::random::<f64>() / 10.0);
        (base + jitter).min(self.max)
    }
}

impl Default for Backoff {
    /// 1 s, doubling up to 5 minutes.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

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
#[derive(Clone)]
pub struct RunnerConfig {
    /// Names the controller in spans and metrics (`task-controller`, …).
    pub controller: &'static str,
    /// Reconciles running at once (at least one).
    pub concurrency: usize,
    /// How long a trigger waits, so that a burst of changes to one object becomes one
    /// reconcile.
    pub debounce: Duration,
    /// The wait after failed reconciles of one object.
    pub backoff: Backoff,
    pub metrics: ReconcileMetrics,
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
/// turn comes is skipped (it was deleted). A failed reconcile is retried after the
/// object's backoff, or after what `error_policy` returns if that is later; a change of the
/// object may trigger it sooner. A reconcile that panics makes this function panic once the
/// others have ended.
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
    E: Display + ErrorReason + Send + 'static,
    Rec: Fn(Arc<K>, Arc<C>) -> RecFut + Clone + Send + Sync + 'static,
    RecFut: Future<Output = Result<Action, E>> + Send + 'static,
    Policy: Fn(Arc<K>, &E, Arc<C>) -> Action + Clone + Send + Sync + 'static,
{
    let controller = config.controller;
    let metrics = config.metrics.clone();
    let mut queue: WorkQueue<ObjectRef<K>> = WorkQueue::default();
    let mut failures: HashMap<ObjectRef<K>, u32> = HashMap::new();
    // Dropping the set (the run itself dropped) aborts the reconciles under way.
    let mut in_flight = tokio::task::JoinSet::new();
    let triggers = triggers.fuse();
    futures::pin_mut!(triggers, stop);
    let mut panic = None;
    loop {
        while let Some(key) = queue.start_next(config.concurrency) {
            let object = match store.lookup(&key) {
                Lookup::Found(object) => object,
                Lookup::Missing => {
                    failures.remove(&key);
                    queue.finish(&key, None);
                    continue;
                }
                Lookup::Unreadable(err) => {
                    let wait = config.backoff.after(count_failure(&mut failures, &key));
                    metrics.failed(controller, "Unreadable");
                    error!(controller, object = %key, error = %err, retry_in = ?wait, "the cached object cannot be read; retrying");
                    queue.finish(&key, Some(Instant::now() + wait));
                    continue;
                }
            };
            let reconcile = reconcile.clone();
            let error_policy = error_policy.clone();
            let context = context.clone();
            let metrics = metrics.clone();
            let span = info_span!("reconcile", controller, object = %key);
            in_flight.spawn(
                async move {
                    let started = std::time::Instant::now();
                    let result = reconcile(object.clone(), context.clone()).await;
                    let label = ControllerLabel { controller };
                    metrics.reconciles.get_or_create(&label).inc();
                    metrics
                        .duration
                        .get_or_create(&label)
                        .observe(started.elapsed().as_secs_f64());
                    let outcome = match result {
                        Ok(action) => Ok(action),
                        Err(err) => {
                            metrics.failed(controller, err.reason());
                            Err(error_policy(object, &err, context))
                        }
                    };
                    (key, outcome)
                }
                .instrument(span),
            );
        }
        metrics.queue(controller, queue.waiting(), queue.running());
        let next_due = queue.next_due();
        tokio::select! {
            biased;
            () = &mut stop => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => match done {
                Ok((key, Ok(action))) => {
                    failures.remove(&key);
                    let at = action.requeue_after().map(|after| Instant::now() + after);
                    queue.finish(&key, at);
                }
                Ok((key, Err(asked))) => {
                    let wait = config
                        .backoff
                        .after(count_failure(&mut failures, &key))
                        .max(asked.requeue_after().unwrap_or_default());
                    queue.finish(&key, Some(Instant::now() + wait));
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
    metrics.queue(controller, 0, 0);
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

/// Counts one more consecutive failure of `key`; returns the count.
fn count_failure<T: Eq + Hash + Clone>(failures: &mut HashMap<T, u32>, key: &T) -> u32 {
    let count = failures.entry(key.clone()).or_insert(0);
    *count = count.saturating_add(1);
    *count
}

/// Sleeps until `at`, or forever when there is nothing to wait for (for a `select!` arm).
pub async fn sleep_until(at: Option<Instant>) {
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
        use std::sync::Mutex;
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
        fn then_open<K: kube::Resource<DynamicType = ()> + Send + 'static>(
            references: Vec<ObjectRef<K>>,
        ) -> impl Stream<Item = ObjectRef<K>> + Send {
            futures::stream::iter(references).chain(futures::stream::pending())
        }

        fn config(concurrency: usize, debounce: Duration) -> RunnerConfig {
            RunnerConfig {
                controller: "test",
                concurrency,
                debounce,
                backoff: Backoff {
                    first: Duration::from_millis(10),
                    max: Duration::from_millis(80),
                },
                metrics: ReconcileMetrics::default(),
            }
        }

        fn one_at_a_time() -> RunnerConfig {
            config(1, Duration::ZERO)
        }

        #[derive(Debug)]
        struct NotYet;

        impl std::fmt::Display for NotYet {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("not yet")
            }
        }

        impl ErrorReason for NotYet {
            fn reason(&self) -> &'static str {
                "NotYet"
            }
        }

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
                config(3, Duration::from_millis(10)),
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
            let mut slow = one_at_a_time();
            slow.backoff = Backoff {
                first: Duration::from_millis(1),
                max: Duration::from_millis(1),
            };
            let started = std::time::Instant::now();
            run(
                store.clone(),
                then_open(store.refs()),
                slow,
                stop_after(&seen, 3, Duration::ZERO),
                |_object: Arc<ConfigMap>, seen: Arc<Seen>| async move {
                    seen.runs.fetch_add(1, Ordering::SeqCst);
                    Err::<Action, _>(NotYet)
                },
                |_, _, _| Action::requeue(Duration::from_millis(100)),
                seen.clone(),
            )
            .await;
            assert!(seen.runs.load(Ordering::SeqCst) >= 3);
            assert!(
                started.elapsed() >= Duration::from_millis(200),
                "the policy's longer wait wins over the backoff"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn failures_back_off_per_object_and_a_success_resets_the_backoff() {
            let store = store_of(&["bad", "good"]);
            let runs: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
            let metrics = ReconcileMetrics::default();
            let mut cfg = one_at_a_time();
            cfg.metrics = metrics.clone();
            let stop = tokio::time::sleep(Duration::from_millis(1_000));
            run(
                store.clone(),
                then_open(store.refs()),
                cfg,
                stop,
                |object: Arc<ConfigMap>, runs: Arc<Mutex<Vec<(String, Instant)>>>| async move {
                    let name = object.metadata.name.clone().unwrap_or_default();
                    let mut runs = runs.lock().expect("lock");
                    runs.push((name.clone(), Instant::now()));
                    let bad_runs = runs.iter().filter(|(n, _)| n == "bad").count();
                    // "bad" fails four times, then succeeds, then fails again.
                    if name == "bad" && bad_runs != 5 {
                        return Err(NotYet);
                    }
                    if name == "bad" {
                        return Ok(Action::requeue(Duration::from_millis(5)));
                    }
                    Ok(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                runs.clone(),
            )
            .await;
            let runs = runs.lock().expect("lock");
            let bad: Vec<Instant> = runs
                .iter()
                .filter(|(n, _)| n == "bad")
                .map(|(_, at)| *at)
                .collect();
            let gaps: Vec<u128> = bad.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
            // 10, 20, 40, 80 (capped) ms after each failure, plus at most a tenth; 5 ms after
            // the success; then 10 ms again: the success reset the count.
            let expected = [(10, 11), (20, 22), (40, 44), (80, 80), (5, 5), (10, 11)];
            for (gap, (low, high)) in gaps.iter().zip(expected) {
                assert!((low..=high).contains(gap), "gaps {gaps:?}");
            }
            assert_eq!(
                runs.iter().filter(|(n, _)| n == "good").count(),
                1,
                "the other object is not held back"
            );
            assert_eq!(metrics.errors("test", "NotYet") as usize, bad.len() - 1);
            assert_eq!(metrics.reconciles("test") as usize, runs.len());
        }

        #[tokio::test(start_paused = true)]
        async fn an_unreadable_object_is_retried_never_taken_for_deleted() {
            use crate::store::flaky::{Flaky, Mode, flaky};
            let store: Store<Flaky> = Store::default();
            store.upsert(&flaky(Mode::Undecodable));
            let metrics = ReconcileMetrics::default();
            let mut cfg = one_at_a_time();
            cfg.metrics = metrics.clone();
            let runs = Arc::new(AtomicUsize::new(0));
            let fixer = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                fixer.upsert(&flaky(Mode::Fine));
            });
            run(
                store.clone(),
                then_open(store.refs()),
                cfg,
                tokio::time::sleep(Duration::from_millis(400)),
                |_object: Arc<Flaky>, runs: Arc<AtomicUsize>| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                runs.clone(),
            )
            .await;
            assert!(metrics.errors("test", "Unreadable") >= 2);
            assert_eq!(
                runs.load(Ordering::SeqCst),
                1,
                "reconciled once it could be read, though nothing triggered it again"
            );
        }

        #[tokio::test]
        async fn dropping_the_run_aborts_the_reconciles_under_way() {
            let store = store_of(&["o"]);
            let seen = Arc::new(Seen::default());
            let run = run(
                store.clone(),
                then_open(store.refs()),
                one_at_a_time(),
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
                one_at_a_time(),
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
