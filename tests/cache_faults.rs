//! The runtime's caches under faults, against a real kube-apiserver: a paged list that fails
//! part-way, readers held back while objects come and go, dropped watch connections and
//! 410 Gone, and a property test that mixes them all with random changes and checks that
//! every reader ends up seeing what the apiserver holds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recac_runtime::cache::{Cache, CacheSpec, Notice, strip_metadata};
use recac_runtime::store::Lookup;
use recac_testenv::ControlPlaneOptions;
use recac_testenv::faults::Faults;
use recac_tests::{control_plane, wait_for};

fn config_map(name: &str, value: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.data = Some([("v".to_string(), value.to_string())].into());
    cm
}

fn strip(cm: &mut ConfigMap) {
    strip_metadata(&mut cm.metadata);
}

/// A cache of the ConfigMaps of `namespace`, listed `page_size` at a time.
fn cache_of(client: &Client, namespace: &str, page_size: u32) -> Cache<ConfigMap> {
    let (cache, driver) = Cache::new(CacheSpec {
        name: "configmaps".into(),
        apis: vec![Api::namespaced(client.clone(), namespace)],
        namespaces: vec![namespace.to_string()],
        watch: watcher::Config::default().page_size(page_size),
        strip,
        hooks: Vec::new(),
    });
    tokio::spawn(driver);
    cache
}

/// name → uid, of what the apiserver holds now.
async fn apiserver_view(api: &Api<ConfigMap>) -> BTreeMap<String, String> {
    api.list(&ListParams::default())
        .await
        .expect("list")
        .into_iter()
        .map(|cm| (cm.name_any(), cm.uid().unwrap_or_default()))
        .collect()
}

fn store_view(cache: &Cache<ConfigMap>) -> BTreeMap<String, String> {
    cache
        .store()
        .state()
        .iter()
        .map(|cm| (cm.name_any(), cm.uid().unwrap_or_default()))
        .collect()
}

async fn create_all(api: &Api<ConfigMap>, names: impl Iterator<Item = String>) {
    futures::stream::iter(names)
        .for_each_concurrent(16, |name| async move {
            api.create(&PostParams::default(), &config_map(&name, "0"))
                .await
                .expect("create");
        })
        .await;
}

async fn delete_all(api: &Api<ConfigMap>, names: impl Iterator<Item = String>) {
    futures::stream::iter(names)
        .for_each_concurrent(16, |name| async move {
            api.delete(&name, &DeleteParams::default())
                .await
                .expect("delete");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_list_that_fails_after_its_second_page_leaves_no_ghost() {
    let plane = control_plane(ControlPlaneOptions::default()).await;
    let ns = plane.namespace("cache-ghost").await.expect("namespace");
    let api: Api<ConfigMap> = Api::namespaced(plane.client().await.expect("client"), &ns);
    create_all(&api, (0..7).map(|i| format!("c{i}"))).await;

    let faults = Faults::new();
    faults.fail_list_after_pages(2);
    faults.hold_lists_after_failure();
    let client = faults
        .client(plane.config().await.expect("config"))
        .expect("client");
    let cache = cache_of(&client, &ns, 2);
    faults.list_failed().await;
    // c0 came with the first page; it goes before the list starts again.
    api.delete("c0", &DeleteParams::default())
        .await
        .expect("delete");
    faults.release_lists();
    tokio::time::timeout(Duration::from_secs(30), cache.wait_ready())
        .await
        .expect("the cache syncs after the failed list");
    assert_eq!(
        store_view(&cache),
        apiserver_view(&api).await,
        "the cache holds what the apiserver holds, and no ghost of c0"
    );
    assert!(
        cache
            .store()
            .get(&kube::runtime::reflector::ObjectRef::new("c0").within(&ns))
            .is_none()
    );
}

/// What a reader of [`Cache::triggers`] makes of what it is given: an object still in the
/// store (same uid) is live, any other is a deletion.
#[derive(Default)]
struct TriggerView {
    live: BTreeMap<String, String>,
    deleted: BTreeMap<String, usize>,
}

impl TriggerView {
    fn take(&mut self, cache: &Cache<ConfigMap>, object: &ConfigMap) {
        let reference = kube::runtime::reflector::ObjectRef::new(&object.name_any())
            .within(&object.namespace().unwrap_or_default());
        let cached = cache.store().get(&reference);
        let uid = object.uid().unwrap_or_default();
        if cached.is_some_and(|c| c.uid() == object.uid()) {
            self.live.insert(object.name_any(), uid);
        } else {
            if self.live.get(&object.name_any()) == Some(&uid) {
                self.live.remove(&object.name_any());
            }
            *self.deleted.entry(object.name_any()).or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_held_back_past_the_buffer_hears_of_every_deletion() {
    const OBJECTS: usize = 1_500;
    let plane = control_plane(ControlPlaneOptions::default()).await;
    let ns = plane.namespace("cache-lag").await.expect("namespace");
    let client = plane.client().await.expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cache = cache_of(&client, &ns, 500);
    cache.wait_ready().await;
    // Subscribed now, read only once every object has come and gone.
    let held_back = cache.triggers();
    let names = || (0..OBJECTS).map(|i| format!("o{i:04}"));
    create_all(&api, names()).await;
    delete_all(&api, names()).await;
    wait_for(
        "the cache to see every deletion",
        Duration::from_secs(60),
        || {
            let empty = cache.store().is_empty();
            async move { empty.then_some(()) }
        },
    )
    .await;

    let mut view = TriggerView::default();
    let mut held_back = Box::pin(held_back);
    while let Ok(Some(object)) =
        tokio::time::timeout(Duration::from_millis(500), held_back.next()).await
    {
        view.take(&cache, &object);
    }
    let missed: Vec<String> = names().filter(|n| !view.deleted.contains_key(n)).collect();
    assert!(
        missed.is_empty(),
        "the reader never heard that {} of {OBJECTS} objects were deleted (first: {:?})",
        missed.len(),
        missed.first()
    );
    assert!(view.live.is_empty(), "{:?}", view.live.keys().next());
}

/// A reader's view from [`Cache::subscribe`]: name → uid of the objects it was told exist.
type SharedView = Arc<Mutex<BTreeMap<String, String>>>;

fn take_notice(cache: &Cache<ConfigMap>, view: &SharedView, notice: Notice<ConfigMap>) {
    let mut view = view.lock().expect("view");
    match notice {
        Notice::Applied(reference) => match cache.store().lookup(&reference) {
            Lookup::Found(object) => {
                view.insert(object.name_any(), object.uid().unwrap_or_default());
            }
            // Deleted since; its Deleted notice is pending.
            Lookup::Missing => {}
            Lookup::Unreadable(err) => panic!("{reference} cannot be read: {err}"),
        },
        Notice::Deleted(object) => {
            if view.get(&object.name_any()) == object.uid().as_ref() {
                view.remove(&object.name_any());
            }
        }
    }
}

/// A reader that reads every notice as it comes (`pace` none) or in bursts of up to ten
/// notices with pauses of up to `pace` between them (a busy reader).
fn spawn_reader(
    cache: &Cache<ConfigMap>,
    pace: Option<(u64, Duration)>,
) -> (SharedView, tokio::task::JoinHandle<()>) {
    let view = SharedView::default();
    let notices = cache.subscribe();
    let (cache, shared) = (cache.clone(), view.clone());
    let task = tokio::spawn(async move {
        let mut notices = Box::pin(notices);
        let mut rng = pace.map(|(seed, _)| StdRng::seed_from_u64(seed));
        loop {
            if let (Some(rng), Some((_, pause))) = (rng.as_mut(), pace) {
                tokio::time::sleep(pause.mul_f64(rng.random::<f64>())).await;
                for _ in 0..rng.random_range(1..=10) {
                    let Some(notice) = notices.next().await else {
                        return;
                    };
                    take_notice(&cache, &shared, notice);
                }
            } else {
                let Some(notice) = notices.next().await else {
                    return;
                };
                take_notice(&cache, &shared, notice);
            }
        }
    });
    (view, task)
}

async fn patch_value(api: &Api<ConfigMap>, name: &str, value: &str) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"data": {"v": value}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// name → (uid, resourceVersion).
fn versions(objects: impl Iterator<Item = ConfigMap>) -> BTreeMap<String, (String, String)> {
    objects
        .map(|cm| {
            (
                cm.name_any(),
                (
                    cm.uid().unwrap_or_default(),
                    cm.resource_version().unwrap_or_default(),
                ),
            )
        })
        .collect()
}

/// One case of the property test: random creates, updates and deletes of ten names, mixed
/// with dropped watch connections, 410 Gone and lists failing part-way, while four readers
/// read (one from the start, one busy, one that subscribes half-way, one through
/// `triggers`). Once the apiserver is left alone, the store must hold what the apiserver
/// holds, version for version, and every reader's view must equal it.
async fn random_case(plane: &recac_testenv::ControlPlane, seed: u64, operations: usize) {
    let ns = plane.namespace("cache-prop").await.expect("namespace");
    let direct: Api<ConfigMap> = Api::namespaced(plane.client().await.expect("client"), &ns);
    create_all(&direct, (0..5).map(|i| format!("n{i}"))).await;
    let faults = Faults::new();
    let client = faults
        .client(plane.config().await.expect("config"))
        .expect("client");
    let cache = cache_of(&client, &ns, 3);
    let mut readers = vec![
        spawn_reader(&cache, None),
        spawn_reader(&cache, Some((seed, Duration::from_millis(40)))),
    ];
    let trigger_view = Arc::new(Mutex::new(TriggerView::default()));
    tokio::time::timeout(Duration::from_secs(30), cache.wait_ready())
        .await
        .expect("the cache syncs");
    let trigger_reader = {
        let (cache, view) = (cache.clone(), trigger_view.clone());
        let triggers = cache.triggers();
        tokio::spawn(async move {
            let mut triggers = Box::pin(triggers);
            while let Some(object) = triggers.next().await {
                view.lock().expect("view").take(&cache, &object);
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    for op in 0..operations {
        if op == operations / 2 {
            readers.push(spawn_reader(&cache, None));
        }
        let name = format!("n{}", rng.random_range(0..10));
        let roll = rng.random_range(0..100);
        let what = match roll {
            0..32 => {
                let done = direct
                    .create(&PostParams::default(), &config_map(&name, "0"))
                    .await;
                format!("create {name}: {}", done.is_ok())
            }
            32..58 => {
                let done = patch_value(&direct, &name, &op.to_string()).await;
                format!("update {name}: {}", done.is_ok())
            }
            58..84 => {
                let done = direct.delete(&name, &DeleteParams::default()).await;
                format!("delete {name}: {}", done.is_ok())
            }
            84..96 => {
                faults.cut_watches();
                "cut the watch".to_string()
            }
            96..98 => {
                faults.expire_next_watch();
                faults.cut_watches();
                "410 Gone on the next watch".to_string()
            }
            _ => {
                faults.fail_list_after_pages(1);
                faults.expire_next_watch();
                faults.cut_watches();
                "410 Gone, then a relist failing after its first page".to_string()
            }
        };
        log.push(what);
        // Time for the watch to come back after a fault, now and then.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..80))).await;
    }

    let expected = versions(
        direct
            .list(&ListParams::default())
            .await
            .expect("list")
            .into_iter(),
    );
    let uids: BTreeMap<String, String> = expected
        .iter()
        .map(|(name, (uid, _))| (name.clone(), uid.clone()))
        .collect();
    let context = || format!("seed {seed}: {}; operations: {log:?}", faults.summary());
    let settled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let store = versions(cache.store().state().iter().map(|o| (**o).clone()));
            let views_agree = readers
                .iter()
                .all(|(view, _)| *view.lock().expect("view") == uids)
                && trigger_view.lock().expect("view").live == uids;
            if store == expected && views_agree {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if settled.is_err() {
        let store = versions(cache.store().state().iter().map(|o| (**o).clone()));
        let views: Vec<BTreeMap<String, String>> = readers
            .iter()
            .map(|(view, _)| view.lock().expect("view").clone())
            .collect();
        panic!(
            "{}\napiserver: {expected:?}\nstore: {store:?}\nreaders: {views:?}\ntriggers reader: {:?}",
            context(),
            trigger_view.lock().expect("view").live
        );
    }
    println!(
        "{}",
        context().split("; operations").next().unwrap_or_default()
    );
    for (_, task) in readers {
        task.abort();
    }
    trigger_reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_agrees_with_the_apiserver_after_random_changes_and_faults() {
    let plane = control_plane(ControlPlaneOptions::default()).await;
    // RECAC_CACHE_SEEDS="1 2 3" replays chosen cases; RECAC_CACHE_OPERATIONS sets their length.
    let seeds: Vec<u64> = std::env::var("RECAC_CACHE_SEEDS")
        .ok()
        .map(|s| {
            s.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_else(|| (1..=6).collect());
    let operations: usize = std::env::var("RECAC_CACHE_OPERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(80);
    for seed in seeds {
        random_case(plane, seed, operations).await;
    }
}
