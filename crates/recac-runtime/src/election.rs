//! Leader election over a `coordination.k8s.io/v1` Lease, feeding [`Leadership`].
//!
//! The Lease itself is taken, renewed and released by `kube-lease-manager`. On top of it,
//! this module decides when this replica may *write*, and is stricter than "the lease manager
//! last said we lead":
//!
//! - the replica watches its Lease and writes only while the Lease names it as holder and its
//!   last renewal observed is younger than `renewDeadlineSeconds`; a renewal that keeps failing
//!   (the API unreachable, a partition) withdraws leadership at that deadline, before the
//!   lease can expire and a standby take over;
//! - a Lease taken by anyone else withdraws leadership as soon as the watch shows it;
//! - a standby that sees the Lease released (the leader shut down) competes for it at once
//!   instead of sleeping until the old lease would have expired;
//! - on shutdown, leadership is withdrawn first and the Lease released last, so a standby
//!   takes over in about a second.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{InvalidConfig, invalid, is_dns_subdomain};
use crate::leadership::Leadership;
use crate::metrics::MetricsRegistry;

/// The label the leader's pod carries (`"true"`), so that a Service can route to it.
pub const LEADER_LABEL: &str = "recac.io/leader";

/// `operator.leaderElection` in the configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LeaderElectionSettings {
    /// Elect a leader among replicas; off, this replica always writes (run exactly one).
    pub enabled: bool,
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease; empty means the operator's own namespace (`POD_NAMESPACE`,
    /// else the service account's namespace, else `default`).
    pub lease_namespace: String,
    /// How long a Lease stays valid after its last renewal: the longest a standby waits
    /// when the leader dies without releasing it.
    pub lease_duration_seconds: u64,
    /// The leader stops writing when it has not renewed for this long.
    pub renew_deadline_seconds: u64,
    /// How often the leader renews.
    pub retry_period_seconds: u64,
    /// Label the leader's pod `recac.io/leader=true` (needs `POD_NAME` and `POD_NAMESPACE`).
    pub label_leader_pod: bool,
}

impl Default for LeaderElectionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_name: "recac-operator".into(),
            lease_namespace: String::new(),
            lease_duration_seconds: 15,
            renew_deadline_seconds: 10,
            retry_period_seconds: 2,
            label_leader_pod: true,
        }
    }
}

impl LeaderElectionSettings {
    /// Checks every key; `section` is the key of this section (`operator.leaderElection`).
    pub fn validate(&self, section: &str) -> Result<(), InvalidConfig> {
        if !is_dns_subdomain(&self.lease_name) {
            return Err(invalid(
                &format!("{section}.leaseName"),
                format!("{:?} is not a valid object name", self.lease_name),
            ));
        }
        if !self.lease_namespace.is_empty() && !crate::config::is_dns_label(&self.lease_namespace) {
            return Err(invalid(
                &format!("{section}.leaseNamespace"),
                format!("{:?} is not a namespace name", self.lease_namespace),
            ));
        }
        if self.retry_period_seconds == 0 {
            return Err(invalid(
                &format!("{section}.retryPeriodSeconds"),
                "must be at least 1",
            ));
        }
        if self.renew_deadline_seconds <= self.retry_period_seconds {
            return Err(invalid(
                &format!("{section}.renewDeadlineSeconds"),
                format!(
                    "must be greater than retryPeriodSeconds ({})",
                    self.retry_period_seconds
                ),
            ));
        }
        if self.lease_duration_seconds <= self.renew_deadline_seconds
            || self.lease_duration_seconds > 3600
        {
            return Err(invalid(
                &format!("{section}.leaseDurationSeconds"),
                format!(
                    "must be greater than renewDeadlineSeconds ({}) and at most 3600",
                    self.renew_deadline_seconds
                ),
            ));
        }
        Ok(())
    }

    /// The Lease's namespace: as configured, else the namespace this process runs in.
    pub fn resolved_namespace(&self) -> String {
        if !self.lease_namespace.is_empty() {
            return self.lease_namespace.clone();
        }
        own_namespace().unwrap_or_else(|| "default".into())
    }
}

/// The namespace this process runs in, when it can tell.
pub fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|ns| !ns.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|ns| ns.trim().to_string())
                .filter(|ns| !ns.is_empty())
        })
}

/// The pod this process runs in, for the leader label.
#[derive(Clone, Debug)]
pub struct OwnPod {
    pub name: String,
    pub namespace: String,
}

impl OwnPod {
    /// From `POD_NAME` and `POD_NAMESPACE` (the Deployment sets both).
    pub fn from_env() -> Option<Self> {
        let name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty())?;
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())?;
        Some(Self { name, namespace })
    }
}

/// Metrics of the election.
#[derive(Clone)]
struct ElectionMetrics {
    leader: Gauge,
    acquired: Counter,
    lost: Counter,
}

impl ElectionMetrics {
    fn register(registry: &MetricsRegistry) -> Self {
        let metrics = Self {
            leader: Gauge::default(),
            acquired: Counter::default(),
            lost: Counter::default(),
        };
        registry.register(
            "recac_leader",
            "1 while this replica holds the leader Lease and may write, 0 otherwise.",
            metrics.leader.clone(),
        );
        registry.register(
            "recac_leadership_acquired",
            "Times this replica became the leader.",
            metrics.acquired.clone(),
        );
        registry.register(
            "recac_leadership_lost",
            "Times this replica stopped being the leader (lost, taken, or not renewed in time).",
            metrics.lost.clone(),
        );
        metrics
    }
}

/// What the Lease said when last seen.
#[derive(Clone, Debug, Default, PartialEq)]
struct ObservedLease {
    holder: Option<String>,
    renewed: Option<SystemTime>,
}

impl ObservedLease {
    fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renewed: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| SystemTime::from(t.0)),
        }
    }
}

/// Whether this replica may write, and until when; pure, so it is tested without a server.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// May write until the instant given (unless something changes before).
    Lead { until: SystemTime },
    /// May not write, and why.
    Follow { why: &'static str },
}

fn judge(
    identity: &str,
    manager_says_leader: bool,
    observed: &ObservedLease,
    renew_deadline: Duration,
    now: SystemTime,
) -> Verdict {
    if !manager_says_leader {
        return Verdict::Follow {
            why: "another replica holds the lease",
        };
    }
    if observed.holder.as_deref() != Some(identity) {
        return Verdict::Follow {
            why: "the lease does not name this replica",
        };
    }
    let Some(renewed) = observed.renewed else {
        return Verdict::Follow {
            why: "the lease has no renewal time",
        };
    };
    let until = renewed + renew_deadline;
    if now >= until {
        return Verdict::Follow {
            why: "the lease was not renewed within renewDeadlineSeconds",
        };
    }
    Verdict::Lead { until }
}

/// The election, built; [`LeaderElection::run`] drives it.
pub struct LeaderElection {
    client: Client,
    settings: LeaderElectionSettings,
    namespace: String,
    identity: String,
    pod: Option<OwnPod>,
    metrics: ElectionMetrics,
    allowed: watch::Sender<bool>,
}

impl LeaderElection {
    /// `client` must not be fenced by the leadership (the Lease is written while following).
    /// `identity` names this process in the Lease; it must be unique per process start.
    pub fn new(
        client: Client,
        settings: LeaderElectionSettings,
        identity: String,
        pod: Option<OwnPod>,
        registry: &MetricsRegistry,
    ) -> Self {
        let namespace = settings.resolved_namespace();
        let (allowed, _) = watch::channel(false);
        Self {
            client,
            settings,
            namespace,
            identity,
            pod,
            metrics: ElectionMetrics::register(registry),
            allowed,
        }
    }

    /// The signal the supervisor and the write fences follow.
    pub fn leadership(&self) -> Leadership {
        Leadership::from_receiver(self.allowed.subscribe())
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Competes for the Lease until `release` is cancelled; then withdraws leadership,
    /// releases the Lease if held, and returns. Errors talking to the API are retried.
    pub async fn run(self, release: CancellationToken) {
        let settings = &self.settings;
        let renew_deadline = Duration::from_secs(settings.renew_deadline_seconds);
        let retry = Duration::from_secs(settings.retry_period_seconds);
        info!(
            identity = %self.identity,
            lease = %format!("{}/{}", self.namespace, settings.lease_name),
            "leader election starts"
        );
        if let Some(pod) = &self.pod
            && settings.label_leader_pod
        {
            // A restarted container keeps its pod's labels: start unlabelled.
            self.label_pod(pod, false).await;
        }

        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut lease_events = watcher(
            leases,
            watcher::Config::default().fields(&format!("metadata.name={}", settings.lease_name)),
        )
        .default_backoff()
        .boxed();

        let mut manager: Option<Arc<LeaseManager>> = None;
        let mut changed: Option<BoxFuture<'static, kube_lease_manager::Result<bool>>> = None;
        let mut manager_says_leader = false;
        let mut observed = ObservedLease::default();
        let mut leading = false;
        // Whether this replica held the Lease at any time: only then is there one to give up.
        let mut ever_led = false;

        loop {
            if manager.is_none() {
                match self.build_manager().await {
                    Ok(built) => manager = Some(Arc::new(built)),
                    Err(err) => {
                        warn!(error = %err, "cannot set up the leader lease; retrying");
                        tokio::select! {
                            _ = release.cancelled() => break,
                            _ = tokio::time::sleep(retry) => continue,
                        }
                    }
                }
            }
            if changed.is_none()
                && let Some(manager) = &manager
            {
                let manager = manager.clone();
                changed = Some(async move { manager.changed().await }.boxed());
            }

            let verdict = judge(
                &self.identity,
                manager_says_leader,
                &observed,
                renew_deadline,
                SystemTime::now(),
            );
            let now_leading = matches!(verdict, Verdict::Lead { .. });
            ever_led |= now_leading;
            if now_leading != leading {
                leading = now_leading;
                self.transition(leading, &verdict).await;
            }
            let wake_at = match verdict {
                Verdict::Lead { until } => Some(until),
                Verdict::Follow { .. } => None,
            };
            let deadline = async {
                match wake_at {
                    Some(at) => {
                        let wait = at
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO);
                        tokio::time::sleep(wait).await
                    }
                    None => std::future::pending().await,
                }
            };

            tokio::select! {
                biased;
                _ = release.cancelled() => break,
                _ = deadline => {}
                event = lease_events.next() => match event {
                    Some(Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease))) => {
                        let seen = ObservedLease::from_lease(&lease);
                        let released = observed.holder.is_some() && seen.holder.is_none();
                        observed = seen;
                        if released && !manager_says_leader {
                            // The leader let go: compete now, not when the old lease expires.
                            debug!("the lease was released; competing for it");
                            manager = None;
                            changed = None;
                        }
                    }
                    Some(Ok(watcher::Event::Delete(_))) => observed = ObservedLease::default(),
                    Some(Ok(_)) => {}
                    Some(Err(err)) => debug!(error = %err, "lease watch error; it resumes"),
                    None => break,
                },
                outcome = async { changed.as_mut().expect("set above").await }, if changed.is_some() => {
                    changed = None;
                    match outcome {
                        Ok(leader) => manager_says_leader = leader,
                        Err(err) => {
                            warn!(error = %err, "leader lease renewal or acquisition failed; retrying");
                            tokio::select! {
                                _ = release.cancelled() => break,
                                _ = tokio::time::sleep(retry) => {}
                            }
                        }
                    }
                }
            }
        }

        // Stop writing first, then let go of the Lease.
        self.allowed.send_replace(false);
        if leading {
            self.metrics.leader.set(0);
            self.metrics.lost.inc();
        }
        drop(changed);
        if let Some(manager) = manager {
            match tokio::time::timeout(Duration::from_secs(5), manager.release()).await {
                Ok(Ok(())) if ever_led => {
                    info!(identity = %self.identity, "leader lease released")
                }
                Ok(Ok(())) => {
                    tracing::debug!(identity = %self.identity, "stopped as a standby: no lease to release")
                }
                Ok(Err(err)) => warn!(error = %err, "cannot release the leader lease"),
                Err(_) => warn!("releasing the leader lease timed out"),
            }
        }
        if leading
            && let Some(pod) = &self.pod
            && self.settings.label_leader_pod
        {
            self.label_pod(pod, false).await;
        }
    }

    async fn build_manager(&self) -> kube_lease_manager::Result<LeaseManager> {
        let settings = &self.settings;
        LeaseManagerBuilder::new(self.client.clone(), &settings.lease_name)
            .with_namespace(&self.namespace)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .with_identity(&self.identity)
            .with_duration(settings.lease_duration_seconds)
            // The holder renews `grace` seconds before expiry: every retry period.
            .with_grace(settings.lease_duration_seconds - settings.retry_period_seconds)
            .build()
            .await
    }

    async fn transition(&self, leading: bool, verdict: &Verdict) {
        self.allowed.send_replace(leading);
        if leading {
            self.metrics.leader.set(1);
            self.metrics.acquired.inc();
            info!(identity = %self.identity, "this replica is the leader; its controllers start writing");
        } else {
            self.metrics.leader.set(0);
            self.metrics.lost.inc();
            let why = match verdict {
                Verdict::Follow { why } => *why,
                Verdict::Lead { .. } => "",
            };
            warn!(identity = %self.identity, reason = why, "this replica is no longer the leader; writes stop");
        }
        if let Some(pod) = &self.pod
            && self.settings.label_leader_pod
        {
            self.label_pod(pod, leading).await;
        }
    }

    /// Best effort: the label only routes traffic; leadership never depends on it.
    async fn label_pod(&self, pod: &OwnPod, leading: bool) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let value = if leading {
            serde_json::Value::String("true".into())
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
        if let Err(err) = pods
            .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(pod = %pod.name, error = %err, "cannot update the leader label of this pod");
        }
    }
}

/// A unique identity for this process: the pod (or host) name and a random suffix, so a
/// restarted process never mistakes its predecessor's lease for its own.
pub fn process_identity(instance: &str) -> String {
    format!("{instance}_{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "replica-a_x1";

    fn lease(holder: Option<&str>, renewed_ago: Duration, now: SystemTime) -> ObservedLease {
        ObservedLease {
            holder: holder.map(str::to_string),
            renewed: Some(now - renewed_ago),
        }
    }

    #[test]
    fn leads_only_while_the_lease_names_it_and_is_fresh() {
        let now = SystemTime::now();
        let deadline = Duration::from_secs(10);
        let fresh = lease(Some(ME), Duration::from_secs(2), now);
        assert_eq!(
            judge(ME, true, &fresh, deadline, now),
            Verdict::Lead {
                until: now - Duration::from_secs(2) + deadline
            }
        );
        assert!(matches!(
            judge(ME, false, &fresh, deadline, now),
            Verdict::Follow { .. }
        ));
        let stale = lease(Some(ME), Duration::from_secs(10), now);
        assert_eq!(
            judge(ME, true, &stale, deadline, now),
            Verdict::Follow {
                why: "the lease was not renewed within renewDeadlineSeconds"
            }
        );
        let taken = lease(Some("foreign"), Duration::from_secs(0), now);
        assert_eq!(
            judge(ME, true, &taken, deadline, now),
            Verdict::Follow {
                why: "the lease does not name this replica"
            }
        );
        let released = ObservedLease::default();
        assert!(matches!(
            judge(ME, true, &released, deadline, now),
            Verdict::Follow { .. }
        ));
    }

    #[test]
    fn settings_are_validated_with_the_key_named() {
        let ok = LeaderElectionSettings::default();
        assert_eq!(ok.validate("operator.leaderElection"), Ok(()));
        let cases = [
            (
                LeaderElectionSettings {
                    renew_deadline_seconds: 20,
                    ..ok.clone()
                },
                "operator.leaderElection.leaseDurationSeconds",
            ),
            (
                LeaderElectionSettings {
                    retry_period_seconds: 10,
                    ..ok.clone()
                },
                "operator.leaderElection.renewDeadlineSeconds",
            ),
            (
                LeaderElectionSettings {
                    retry_period_seconds: 0,
                    ..ok.clone()
                },
                "operator.leaderElection.retryPeriodSeconds",
            ),
            (
                LeaderElectionSettings {
                    lease_name: "Not_A_Name".into(),
                    ..ok.clone()
                },
                "operator.leaderElection.leaseName",
            ),
            (
                LeaderElectionSettings {
                    lease_namespace: "bad ns".into(),
                    ..ok.clone()
                },
                "operator.leaderElection.leaseNamespace",
            ),
        ];
        for (settings, key) in cases {
            let err = settings.validate("operator.leaderElection").expect_err(key);
            assert_eq!(err.key, key);
        }
    }

    #[test]
    fn identities_differ_per_process_start() {
        let a = process_identity("pod-1");
        assert!(a.starts_with("pod-1_"), "{a}");
        assert_eq!(a.len(), "pod-1_".len() + 8);
    }
}
