//! Which allow-list applies to a connection: the proxy is shared, so it tells clients apart by
//! their source address, and for agent pods the address is the pod IP.
//!
//! [`PodPolicy`] learns pod IPs and allow-lists from the apiserver (a reflector over agent pods,
//! their [`ALLOW_ANNOTATION`]): the annotation is on the pod object, which the agent cannot
//! change, and the pod IP is assigned by the cluster, which the agent cannot choose (its
//! NetworkPolicy and the CNI's source-address checks keep it from sending as another pod).
//!
//! When in doubt it allows nothing: a pod without a parseable annotation gets an empty list, an
//! address claimed by two live pods (host-network pods share the node's) belongs to neither,
//! and a finished pod's address is dropped at once, since the cluster may give it to a new pod.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use recac_api::egress::{ALLOW_ANNOTATION, EgressRule, InvalidEgressRule, parse_allow_annotation};
use tokio::sync::watch;

/// Label selector of the pods [`PodPolicy`] watches: the agent pods of recac's Jobs.
pub const AGENT_POD_SELECTOR: &str = "app=recac-agent";

/// Which allow-list applies to a client, by the client's address.
pub trait Policy: Send + Sync + 'static {
    /// The client's allow-list and a name for it in logs (e.g. "ns/pod"); None: unknown
    /// client, everything is refused.
    fn lookup(&self, client: IpAddr) -> Option<Client>;
}

/// A known client: its name in logs and its allow-list.
#[derive(Clone, Debug)]
pub struct Client {
    pub name: String,
    pub rules: Arc<[EgressRule]>,
}

/// One allow-list for every client (tests, and `recac dev` where agents are local processes).
pub struct StaticPolicy {
    client: Client,
}

impl StaticPolicy {
    pub fn new(name: impl Into<String>, rules: Vec<EgressRule>) -> Self {
        StaticPolicy {
            client: Client {
                name: name.into(),
                rules: rules.into(),
            },
        }
    }
}

impl Policy for StaticPolicy {
    fn lookup(&self, _client: IpAddr) -> Option<Client> {
        Some(self.client.clone())
    }
}

/// Why a pod's annotation gives it no rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("the pod has no {ALLOW_ANNOTATION} annotation")]
    Missing,
    #[error(transparent)]
    Invalid(#[from] InvalidEgressRule),
}

/// The allow-list a pod's annotations give it.
pub fn rules_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<EgressRule>, AnnotationError> {
    let text = annotations
        .get(ALLOW_ANNOTATION)
        .ok_or(AnnotationError::Missing)?;
    Ok(parse_allow_annotation(text)?)
}

/// Agent pods by address, as [`index_pods`] finds them.
#[derive(Debug, Default)]
pub struct PodIndex {
    pub clients: HashMap<IpAddr, Client>,
    /// Pods indexed with nothing allowed because of their annotation: (uid, "ns/name", why).
    pub unparseable: Vec<(String, String, AnnotationError)>,
    /// Addresses that more than one live pod claims; they are left out (refused).
    pub conflicts: Vec<IpAddr>,
}

/// Indexes live agent pods (phase Pending or Running, not on the host network) by each of
/// their pod IPs, with the rules of their annotation (none when it is missing or invalid).
pub fn index_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> PodIndex {
    let mut index = PodIndex::default();
    let mut claimed: HashMap<IpAddr, usize> = HashMap::new();
    for pod in pods {
        let Some(ips) = live_pod_ips(pod) else {
            continue;
        };
        let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let rules = match rules_from_annotations(pod.annotations()) {
            Ok(rules) => rules,
            Err(e) => {
                index
                    .unparseable
                    .push((pod.uid().unwrap_or_default(), name.clone(), e));
                Vec::new()
            }
        };
        let client = Client {
            name,
            rules: rules.into(),
        };
        for ip in ips {
            *claimed.entry(ip).or_default() += 1;
            index.clients.insert(ip, client.clone());
        }
    }
    for (ip, claims) in claimed {
        if claims > 1 {
            index.clients.remove(&ip);
            index.conflicts.push(ip);
        }
    }
    index.conflicts.sort();
    index
}

/// The addresses of a pod that may be sending now; `None` for finished pods, pods not yet
/// given an address, pods on the host network (whose address is the node's) and pods no Job
/// controls (agent pods are a Job's: a bare pod with the label is not one).
fn live_pod_ips(pod: &Pod) -> Option<Vec<IpAddr>> {
    let of_a_job = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "Job" && o.api_version == "batch/v1");
    if !of_a_job {
        return None;
    }
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false);
    let status = pod.status.as_ref()?;
    let live = matches!(status.phase.as_deref(), Some("Pending" | "Running"));
    if host_network || !live {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|pod_ip| pod_ip.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|text| text.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    ips.sort();
    ips.dedup();
    (!ips.is_empty()).then_some(ips)
}

/// Errors starting a [`PodPolicy`].
#[derive(Debug, thiserror::Error)]
pub enum PodPolicyError {
    #[error("cannot list agent pods ({AGENT_POD_SELECTOR}) in {scope}: {source}")]
    List {
        scope: String,
        #[source]
        source: kube::Error,
    },
}

/// Agent pods by IP from a kube reflector over pods labelled `app=recac-agent` (in all
/// namespaces or the given ones), rules from the [`ALLOW_ANNOTATION`]; a pod without a
/// parseable annotation gets nothing allowed (logged once per pod).
#[derive(Clone)]
pub struct PodPolicy {
    clients: Arc<RwLock<HashMap<IpAddr, Client>>>,
    ready: watch::Receiver<bool>,
    stores: Vec<Store<Pod>>,
}

impl PodPolicy {
    /// Checks that agent pods can be listed (in every namespace when `namespaces` is empty)
    /// and returns the policy with the driver that keeps it current: spawn the driver; until
    /// it has listed every namespace ([`PodPolicy::wait_ready`]) every client is unknown.
    pub async fn start(
        client: kube::Client,
        namespaces: Vec<String>,
    ) -> Result<(PodPolicy, impl Future<Output = ()> + Send + 'static), PodPolicyError> {
        let apis: Vec<(String, Api<Pod>)> = if namespaces.is_empty() {
            vec![("all namespaces".to_string(), Api::all(client))]
        } else {
            namespaces
                .iter()
                .map(|ns| {
                    (
                        format!("namespace {ns}"),
                        Api::namespaced(client.clone(), ns),
                    )
                })
                .collect()
        };
        for (scope, api) in &apis {
            api.list_metadata(&ListParams::default().labels(AGENT_POD_SELECTOR).limit(1))
                .await
                .map_err(|source| PodPolicyError::List {
                    scope: scope.clone(),
                    source,
                })?;
        }

        let clients = Arc::new(RwLock::new(HashMap::new()));
        let (ready_sender, ready) = watch::channel(false);
        let mut stores = Vec::new();
        let mut streams = Vec::new();
        for (position, (_, api)) in apis.into_iter().enumerate() {
            let (store, writer) = reflector::store();
            stores.push(store);
            let config = watcher::Config::default().labels(AGENT_POD_SELECTOR);
            let events = watcher::watcher(api, config)
                .default_backoff()
                .modify(|pod: &mut Pod| pod.managed_fields_mut().clear());
            streams.push(
                reflector::reflector(writer, events)
                    .map(move |event| (position, event))
                    .boxed(),
            );
        }
        let policy = PodPolicy {
            clients: clients.clone(),
            ready,
            stores: stores.clone(),
        };
        let driver = drive(stores, streams, clients, ready_sender);
        Ok((policy, driver))
    }

    /// Returns once every watched namespace has been listed and indexed (never, if the driver
    /// is not running).
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        if ready.wait_for(|ready| *ready).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// How many agent pods are cached (live or not).
    pub fn pods(&self) -> usize {
        self.stores.iter().map(Store::len).sum()
    }
}

impl Policy for PodPolicy {
    fn lookup(&self, client: IpAddr) -> Option<Client> {
        let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
        clients.get(&client.to_canonical()).cloned()
    }
}

type PodEvents = futures::stream::BoxStream<'static, (usize, Result<Event<Pod>, watcher::Error>)>;

/// Rebuilds the index from the stores after each change (agent pods are few, and a rebuild
/// cannot drift from the cache the way incremental bookkeeping can).
async fn drive(
    stores: Vec<Store<Pod>>,
    streams: Vec<PodEvents>,
    clients: Arc<RwLock<HashMap<IpAddr, Client>>>,
    ready: watch::Sender<bool>,
) {
    let mut listed = vec![false; stores.len()];
    let mut reported: HashSet<String> = HashSet::new();
    let mut events = futures::stream::select_all(streams);
    while let Some((position, event)) = events.next().await {
        match event {
            Ok(Event::Init | Event::InitApply(_)) => continue,
            Ok(Event::InitDone) => listed[position] = true,
            Ok(Event::Apply(_) | Event::Delete(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "egress proxy: watching agent pods failed; retrying");
                continue;
            }
        }
        let pods: Vec<Arc<Pod>> = stores.iter().flat_map(Store::state).collect();
        let index = index_pods(pods.iter().map(|pod| pod.as_ref()));
        let mut still_unparseable = HashSet::new();
        for (uid, name, error) in index.unparseable {
            if !reported.contains(&uid) {
                tracing::warn!(pod = %name, %error, "egress proxy: agent pod gets nothing allowed");
            }
            still_unparseable.insert(uid);
        }
        reported = still_unparseable;
        for ip in &index.conflicts {
            tracing::warn!(%ip, "egress proxy: more than one live agent pod has this address; refusing it");
        }
        *clients.write().unwrap_or_else(PoisonError::into_inner) = index.clients;
        if listed.iter().all(|done| *done) {
            ready.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    fn pod(name: &str, ips: &[&str], phase: &str, annotation: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("team".to_string()),
                uid: Some(format!("uid-{name}")),
                annotations: annotation
                    .map(|text| BTreeMap::from([(ALLOW_ANNOTATION.to_string(), text.to_string())])),
                owner_references: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        api_version: "batch/v1".into(),
                        kind: "Job".into(),
                        name: format!("{name}-job"),
                        uid: format!("job-uid-{name}"),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    },
                ]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some(phase.to_string()),
                pod_ip: ips.first().map(|ip| ip.to_string()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn a_pod_no_job_controls_is_nobody() {
        let mut bare = pod("bare", &["10.0.0.9"], "Running", Some(r#"["*.com"]"#));
        bare.metadata.owner_references = None;
        let index = index_pods([&bare]);
        assert!(index.clients.is_empty(), "{:?}", index.clients);
    }

    /// Compiles only if the policy's start and its driver can run on a multi-threaded runtime.
    #[allow(dead_code)]
    fn the_driver_can_be_spawned(client: kube::Client) {
        tokio::spawn(async move {
            if let Ok((_policy, driver)) = PodPolicy::start(client, Vec::new()).await {
                driver.await;
            }
        });
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    fn rule_texts(client: &Client) -> Vec<String> {
        client.rules.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn annotation_gives_the_rules() {
        let annotations = BTreeMap::from([(
            ALLOW_ANNOTATION.to_string(),
            r#"["github.com","*.pypi.org:443"]"#.to_string(),
        )]);
        let rules = rules_from_annotations(&annotations).expect("rules");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].to_string(), "*.pypi.org:443");
        assert_eq!(
            rules_from_annotations(&BTreeMap::new()),
            Err(AnnotationError::Missing)
        );
        let bad = BTreeMap::from([(ALLOW_ANNOTATION.to_string(), r#"["a..b"]"#.to_string())]);
        let error = rules_from_annotations(&bad).expect_err("invalid entry");
        assert!(
            error.to_string().starts_with(r#"egress rule "a..b""#),
            "{error}"
        );
    }

    #[test]
    fn live_pods_are_indexed_by_every_address() {
        let pods = [
            pod(
                "dual",
                &["10.0.0.1", "fd00::1"],
                "Running",
                Some(r#"["github.com"]"#),
            ),
            pod(
                "starting",
                &["10.0.0.2"],
                "Pending",
                Some(r#"["*.pypi.org"]"#),
            ),
            pod(
                "done",
                &["10.0.0.3"],
                "Succeeded",
                Some(r#"["github.com"]"#),
            ),
            pod("failed", &["10.0.0.4"], "Failed", Some(r#"["github.com"]"#)),
            pod("no-ip", &[], "Pending", Some(r#"["github.com"]"#)),
        ];
        let index = index_pods(&pods);
        assert_eq!(index.clients.len(), 3);
        let dual = &index.clients[&ip("10.0.0.1")];
        assert_eq!(dual.name, "team/dual");
        assert_eq!(rule_texts(dual), ["github.com"]);
        assert_eq!(rule_texts(&index.clients[&ip("fd00::1")]), ["github.com"]);
        assert_eq!(rule_texts(&index.clients[&ip("10.0.0.2")]), ["*.pypi.org"]);
        assert!(index.unparseable.is_empty() && index.conflicts.is_empty());
    }

    #[test]
    fn pods_without_a_valid_annotation_get_nothing() {
        let pods = [
            pod("bare", &["10.0.0.1"], "Running", None),
            pod("typo", &["10.0.0.2"], "Running", Some(r#"["github..com"]"#)),
            pod("not-json", &["10.0.0.3"], "Running", Some("github.com")),
        ];
        let index = index_pods(&pods);
        for address in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            assert!(index.clients[&ip(address)].rules.is_empty(), "{address}");
        }
        let names: Vec<&str> = index
            .unparseable
            .iter()
            .map(|(_, n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["team/bare", "team/typo", "team/not-json"]);
        assert_eq!(index.unparseable[0].0, "uid-bare");
        assert_eq!(index.unparseable[0].2, AnnotationError::Missing);
    }

    #[test]
    fn shared_and_host_network_addresses_belong_to_nobody() {
        let mut on_host = pod(
            "host",
            &["192.168.1.5"],
            "Running",
            Some(r#"["github.com"]"#),
        );
        if let Some(spec) = on_host.spec.as_mut() {
            spec.host_network = Some(true);
        }
        let pods = [
            on_host,
            pod("a", &["10.0.0.9"], "Running", Some(r#"["github.com"]"#)),
            pod("b", &["10.0.0.9"], "Pending", Some(r#"["*.example.com"]"#)),
            pod("old", &["10.0.0.7"], "Succeeded", Some(r#"["github.com"]"#)),
            pod(
                "new",
                &["10.0.0.7"],
                "Running",
                Some(r#"["*.example.com"]"#),
            ),
        ];
        let index = index_pods(&pods);
        assert!(!index.clients.contains_key(&ip("192.168.1.5")));
        assert!(!index.clients.contains_key(&ip("10.0.0.9")));
        assert_eq!(index.conflicts, [ip("10.0.0.9")]);
        assert_eq!(index.clients[&ip("10.0.0.7")].name, "team/new");
    }
}
