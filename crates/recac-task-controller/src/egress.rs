//! A task's network with the egress allow-list on (pure).
//!
//! Which destinations an agent pod may reach is decided here, once per attempt, from the
//! operator's `agent.egress`, the task's source's `sources[].egress` (each key set replaces
//! the operator's) and the task's `spec.egress`: a spec may narrow the list and may widen it
//! only within what the source (or the operator) `permit`s; ticket text never reaches any of
//! them. The task's repository host and its model's endpoint are added implicitly.
//!
//! The rules go two ways, because a NetworkPolicy knows addresses only:
//! - by name, to the egress proxy: in the pod's [`ALLOW_ANNOTATION`], which the proxy reads
//!   from the pod (nothing in the pod can change it); the agent's tools get the proxy through
//!   the standard proxy variables;
//! - by address, to the cluster: a NetworkPolicy per agent pod allows egress to the proxy's
//!   pods, DNS and the CIDR entries of the list only, and no ingress, so that a tool that
//!   ignores the proxy variables gets nowhere.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use recac_api::egress::{ALLOW_ANNOTATION, EgressRule, EgressTarget, covered};
use recac_api::egress_policy::{EgressMode, SourceEgress};
use recac_api::repo_host::{HostScope, RepoLocation, Transport};
use recac_api::{AgentTask, agent_contract::env};

use crate::budget::{SOURCE_LABEL, source_of};
use crate::config::AgentDefaults;

/// Each source's egress, by source name: the namespace its tasks are in and its section.
pub type SourceEgresses = BTreeMap<String, (String, SourceEgress)>;

/// What the decisions need to resolve a task's network.
#[derive(Clone, Debug, Default)]
pub struct EgressInputs {
    pub defaults: AgentDefaults,
    pub sources: SourceEgresses,
}

/// What a task's agent pod may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// Whatever the cluster lets pods reach: no proxy, no NetworkPolicy.
    Open,
    /// Only `rules` (explicit and implicit, sorted), through the proxy.
    AllowList { rules: Vec<EgressRule> },
}

impl Network {
    /// The allow-list, when there is one.
    pub fn rules(&self) -> Option<&[EgressRule]> {
        match self {
            Network::Open => None,
            Network::AllowList { rules } => Some(rules),
        }
    }
}

/// A task that asks for a destination it may not have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotPermitted {
    #[error("spec.egress.allow[{index}]: {reason}")]
    Invalid { index: usize, reason: String },
    #[error(
        "spec.egress.allow[{index}]: {rule} is not within what this task may ask for ({within}); ask the operator's administrators to permit it"
    )]
    Beyond {
        index: usize,
        rule: String,
        within: String,
    },
    #[error(
        "{field} needs {rule}, which is neither one of the operator's git hosts (agent.gitCredentialHosts) or model endpoints nor within what this task may ask for ({within}); ask the operator's administrators to permit it"
    )]
    Implicit {
        field: &'static str,
        rule: String,
        within: String,
    },
}

/// The network of `task`'s agent pod.
pub fn resolve(
    task: &AgentTask,
    defaults: &AgentDefaults,
    sources: &SourceEgresses,
) -> Result<Network, NotPermitted> {
    let source = task
        .labels()
        .get(SOURCE_LABEL)
        .and_then(|_| sources.get(&source_of(task)))
        .filter(|(namespace, _)| task.namespace().as_deref() == Some(namespace.as_str()))
        .map(|(_, egress)| egress);
    let mode = source.and_then(|s| s.mode).unwrap_or(defaults.egress.mode);
    if mode == EgressMode::Open {
        return Ok(Network::Open);
    }
    let allow = source
        .and_then(|s| s.allow.as_ref())
        .unwrap_or(&defaults.egress.allow);
    let permit = source
        .and_then(|s| s.permit.as_ref())
        .unwrap_or(&defaults.egress.permit);
    let ceiling: Vec<EgressRule> = allow.iter().chain(permit).cloned().collect();
    let mut rules: BTreeSet<EgressRule> = match &task.spec.egress {
        None => allow.iter().cloned().collect(),
        Some(asked) => {
            let mut wanted = BTreeSet::new();
            for (index, text) in asked.allow.iter().enumerate() {
                let rule: EgressRule =
                    text.parse()
                        .map_err(|e: recac_api::egress::InvalidEgressRule| {
                            NotPermitted::Invalid {
                                index,
                                reason: e.to_string(),
                            }
                        })?;
                if !covered(&ceiling, &rule) {
                    return Err(NotPermitted::Beyond {
                        index,
                        rule: rule.to_string(),
                        within: describe(&ceiling, source.is_some()),
                    });
                }
                wanted.insert(rule);
            }
            wanted
        }
    };
    for entry in implicit(task, defaults) {
        if let Some(field) = entry.from_spec
            && !covered(&ceiling, &entry.rule)
        {
            return Err(NotPermitted::Implicit {
                field,
                rule: entry.rule.to_string(),
                within: describe(&ceiling, source.is_some()),
            });
        }
        rules.insert(entry.rule);
    }
    Ok(Network::AllowList {
        rules: rules.into_iter().collect(),
    })
}

fn describe(ceiling: &[EgressRule], from_source: bool) -> String {
    let whose = if from_source {
        "its source's egress allow and permit"
    } else {
        "agent.egress allow and permit"
    };
    if ceiling.is_empty() {
        format!("{whose}: nothing")
    } else {
        let list: Vec<String> = ceiling.iter().map(ToString::to_string).collect();
        format!("{whose}: {}", list.join(", "))
    }
}

/// A destination every task's agent needs, and the spec field it comes from when the
/// operator's configuration does not vouch for it (then it must be within `allow` or
/// `permit`, as if the spec had asked for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Implicit {
    pub rule: EgressRule,
    pub from_spec: Option<&'static str>,
}

/// What every task's agent needs: its repository's host (vouched for when it is one of the
/// operator's git hosts, `agent.gitCredentialHosts`) and its model's endpoint (vouched for
/// when the operator's `agent.env` or a provider's public API names it).
pub fn implicit(task: &AgentTask, defaults: &AgentDefaults) -> Vec<Implicit> {
    let mut rules = Vec::new();
    if let Some(repo) = RepoLocation::of(&task.spec.repository.url) {
        let scopes: Vec<HostScope> = defaults
            .git_credential_hosts
            .iter()
            .filter_map(|h| HostScope::parse(h).ok())
            .collect();
        let vouched = repo.in_scope(&scopes);
        let port = match repo.transport {
            Transport::Https => 443,
            Transport::Http => 80,
            Transport::Ssh => 22,
        };
        let text = if has_port(&repo.host) {
            repo.host.clone()
        } else {
            format!("{}:{port}", repo.host)
        };
        rules.extend(text.parse::<EgressRule>().ok().map(|rule| Implicit {
            rule,
            from_spec: (!vouched).then_some("spec.repository.url"),
        }));
    }
    rules.extend(
        model_endpoint(task, defaults).and_then(|(text, from_spec)| {
            Some(Implicit {
                rule: text.parse().ok()?,
                from_spec,
            })
        }),
    );
    rules
}

fn has_port(host: &str) -> bool {
    match host.rsplit_once(':') {
        Some((head, port)) => {
            !port.is_empty()
                && port.chars().all(|c| c.is_ascii_digit())
                && (!head.contains(':') || head.ends_with(']'))
        }
        None => false,
    }
}

/// `host:port` of the task's model endpoint: the provider's base URL from the agent's
/// plain environment (`OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`), else the provider's public
/// API. A base URL given in a Secret is not visible here: list its host in the allow-list.
fn model_endpoint(
    task: &AgentTask,
    defaults: &AgentDefaults,
) -> Option<(String, Option<&'static str>)> {
    let agent = task.spec.agent.as_deref();
    let provider = agent
        .and_then(|a| a.provider.clone())
        .or_else(|| defaults.provider.clone())?;
    let (variable, public) = match provider.as_str() {
        "openai" => ("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        "anthropic" => ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
        _ => return None,
    };
    let from_spec = agent
        .into_iter()
        .flat_map(|a| a.env.iter())
        .find(|e| e.name == variable)
        .map(|e| e.value.clone());
    let from_operator = defaults
        .env
        .iter()
        .find(|e| e.name == variable)
        .map(|e| e.value.clone());
    let (base, field) = match (from_spec, from_operator) {
        (Some(spec), _) => (spec, Some("spec.agent.env")),
        (None, Some(operator)) => (operator, None),
        (None, None) => (public.to_string(), None),
    };
    let url = url::Url::parse(&base).ok()?;
    let host = match url.host()? {
        url::Host::Ipv6(address) => format!("[{address}]"),
        host => host.to_string(),
    };
    Some((format!("{host}:{}", url.port_or_known_default()?), field))
}

/// The pod annotations and environment of an agent with the allow-list on.
pub fn pod_annotation(rules: &[EgressRule]) -> (String, String) {
    (
        ALLOW_ANNOTATION.to_string(),
        recac_api::egress::allow_annotation(rules),
    )
}

/// The proxy variables every tool reads (git and curl read the lower-case ones, most
/// others either), and the proxy's address for the agent's report.
pub fn proxy_env(proxy: &str) -> Vec<EnvVar> {
    let var = |name: &str, value: &str| EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    };
    let local = "localhost,127.0.0.1,::1";
    vec![
        var("HTTP_PROXY", proxy),
        var("HTTPS_PROXY", proxy),
        var("http_proxy", proxy),
        var("https_proxy", proxy),
        var("NO_PROXY", local),
        var("no_proxy", local),
        var(env::EGRESS_PROXY, proxy),
    ]
}

/// The NetworkPolicy of one attempt's pod (named after its Job, owned by it): no ingress;
/// egress to the proxy's pods on the proxy's port, to DNS, and to the CIDR entries of
/// `rules` on their ports.
pub fn network_policy(
    task: &AgentTask,
    job_name: &str,
    pod_labels: &BTreeMap<String, String>,
    owner: OwnerReference,
    rules: &[EgressRule],
    defaults: &AgentDefaults,
) -> NetworkPolicy {
    let tcp = |port: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut egress = Vec::new();
    let egress_config = &defaults.egress;
    if let (Some((_, port)), Some(namespace)) = (
        egress_config.proxy_address(),
        egress_config.proxy_pods.namespace.as_ref(),
    ) {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        namespace.clone(),
                    )])),
                    ..Default::default()
                }),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(egress_config.proxy_pods.labels.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![tcp(port)]),
        });
    }
    // DNS to the cluster's resolvers only: port 53 to anywhere would be a way around the
    // proxy (a tunnel to a server of one's own on port 53).
    let dns = &egress_config.dns;
    let mut resolvers = vec![NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                dns.namespace.clone(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(dns.labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }];
    resolvers.extend(dns.cidrs.iter().map(|cidr| NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.clone(),
            except: None,
        }),
        ..Default::default()
    }));
    egress.push(NetworkPolicyEgressRule {
        to: Some(resolvers),
        ports: Some(vec![
            NetworkPolicyPort {
                port: Some(IntOrString::Int(53)),
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            tcp(53),
        ]),
    });
    for rule in rules {
        if let EgressTarget::Network(network) = &rule.target {
            egress.push(NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: network.to_string(),
                        except: None,
                    }),
                    ..Default::default()
                }]),
                ports: Some(rule.ports.iter().copied().map(tcp).collect()),
            });
        }
    }
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(job_name.to_string()),
            namespace: task.namespace(),
            labels: Some(pod_labels.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(pod_labels.clone()),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(Vec::new()),
            egress: Some(egress),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recac_api::{AgentSpec, AgentTaskSpec, EnvVarPair, Repository, TaskEgress};

    fn task(url: &str, egress: Option<Vec<&str>>, source: Option<&str>) -> AgentTask {
        let mut task = AgentTask::new(
            "t",
            AgentTaskSpec {
                prompt: Some("p".into()),
                ticket: None,
                repository: Repository {
                    url: url.into(),
                    base_branch: None,
                    branch: None,
                },
                agent: Some(Box::new(AgentSpec {
                    provider: Some("anthropic".into()),
                    ..Default::default()
                })),
                max_retries: 0,
                timeout_seconds: 600,
                ttl_seconds_after_finished: None,
                suspend: false,
                approval: None,
                budget: None,
                egress: egress.map(|allow| TaskEgress {
                    allow: allow.into_iter().map(String::from).collect(),
                }),
            },
        );
        task.metadata.namespace = Some("team".into());
        if let Some(source) = source {
            task.metadata.labels = Some(BTreeMap::from([(
                SOURCE_LABEL.to_string(),
                source.to_string(),
            )]));
        }
        task
    }

    fn rules(list: &[&str]) -> Vec<EgressRule> {
        list.iter().map(|r| r.parse().expect("rule")).collect()
    }

    fn allow_list(permit: &[&str]) -> AgentDefaults {
        let mut defaults = AgentDefaults::default();
        defaults.egress.mode = EgressMode::AllowList;
        defaults.egress.proxy = Some("http://recac-egress.recac-system.svc:3128".into());
        defaults.egress.proxy_pods.namespace = Some("recac-system".into());
        defaults.egress.allow = rules(&["*.pypi.org:443"]);
        defaults.egress.permit = rules(permit);
        defaults.git_credential_hosts = vec!["github.com".into(), "git.example.com:8443".into()];
        defaults
    }

    fn texts(network: &Network) -> Vec<String> {
        network
            .rules()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn open_by_default() {
        let network = resolve(
            &task("https://github.com/o/r", None, None),
            &AgentDefaults::default(),
            &SourceEgresses::new(),
        );
        assert_eq!(network, Ok(Network::Open));
    }

    #[test]
    fn the_repository_and_the_model_are_allowed_implicitly() {
        let network = resolve(
            &task("https://git.example.com:8443/o/r.git", None, None),
            &allow_list(&[]),
            &SourceEgresses::new(),
        )
        .expect("resolves");
        let texts = texts(&network);
        assert!(
            texts.contains(&"git.example.com:8443".to_string()),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"api.anthropic.com:443".to_string()),
            "{texts:?}"
        );
        assert!(texts.contains(&"*.pypi.org:443".to_string()), "{texts:?}");
    }

    #[test]
    fn a_base_url_in_the_environment_is_the_model_endpoint() {
        let mut defaults = allow_list(&[]);
        defaults.env.push(EnvVarPair {
            name: "ANTHROPIC_BASE_URL".into(),
            value: "http://10.99.0.1:9000".into(),
        });
        let network = resolve(
            &task("git@github.com:o/r.git", None, None),
            &defaults,
            &SourceEgresses::new(),
        )
        .expect("resolves");
        let texts = texts(&network);
        assert!(
            texts.iter().any(|t| t.starts_with("10.99.0.1")),
            "{texts:?}"
        );
        assert!(texts.contains(&"github.com:22".to_string()), "{texts:?}");
    }

    #[test]
    fn destinations_from_the_spec_that_the_operator_does_not_vouch_for_need_a_permit() {
        let defaults = allow_list(&["exfil.example.net:443"]);
        let unknown_git = resolve(
            &task("https://elsewhere.example.org/o/r.git", None, None),
            &defaults,
            &SourceEgresses::new(),
        );
        let error = unknown_git
            .expect_err("not a git host of the operator's")
            .to_string();
        assert!(
            error.starts_with("spec.repository.url needs elsewhere.example.org:443"),
            "{error}"
        );
        let mut via_env = task("https://github.com/o/r", None, None);
        if let Some(agent) = via_env.spec.agent.as_mut() {
            agent.env.push(EnvVarPair {
                name: "ANTHROPIC_BASE_URL".into(),
                value: "http://169.254.169.254".into(),
            });
        }
        let error = resolve(&via_env, &defaults, &SourceEgresses::new())
            .expect_err("a spec's base URL is not vouched for")
            .to_string();
        assert!(
            error.starts_with("spec.agent.env needs 169.254.169.254"),
            "{error}"
        );
        if let Some(agent) = via_env.spec.agent.as_mut() {
            agent.env[0].value = "https://exfil.example.net".into();
        }
        let permitted =
            resolve(&via_env, &defaults, &SourceEgresses::new()).expect("within the permit");
        assert!(texts(&permitted).contains(&"exfil.example.net:443".to_string()));
    }

    #[test]
    fn a_spec_narrows_and_widens_only_within_the_permit() {
        let defaults = allow_list(&["files.example.com"]);
        let narrowed = resolve(
            &task("https://github.com/o/r", Some(vec![]), None),
            &defaults,
            &SourceEgresses::new(),
        )
        .expect("narrowing is allowed");
        assert!(!texts(&narrowed).iter().any(|t| t.contains("pypi")));
        let widened = resolve(
            &task(
                "https://github.com/o/r",
                Some(vec!["files.example.com:443"]),
                None,
            ),
            &defaults,
            &SourceEgresses::new(),
        )
        .expect("a permitted entry is allowed");
        assert!(texts(&widened).contains(&"files.example.com:443".to_string()));
        let refused = resolve(
            &task(
                "https://github.com/o/r",
                Some(vec!["evil.example.net"]),
                None,
            ),
            &defaults,
            &SourceEgresses::new(),
        );
        let error = refused.expect_err("outside the permit").to_string();
        assert!(
            error.starts_with("spec.egress.allow[0]: evil.example.net"),
            "{error}"
        );
        let invalid = resolve(
            &task("https://github.com/o/r", Some(vec!["exa mple"]), None),
            &defaults,
            &SourceEgresses::new(),
        );
        assert!(matches!(
            invalid,
            Err(NotPermitted::Invalid { index: 0, .. })
        ));
    }

    #[test]
    fn a_source_replaces_the_operator_keys_it_sets_for_its_own_namespace_only() {
        let defaults = allow_list(&[]);
        let sources = SourceEgresses::from([(
            "jira".to_string(),
            (
                "team".to_string(),
                SourceEgress {
                    mode: None,
                    allow: Some(rules(&["registry.npmjs.org"])),
                    permit: None,
                },
            ),
        )]);
        let of_source = resolve(
            &task("https://github.com/o/r", None, Some("jira")),
            &defaults,
            &sources,
        )
        .expect("resolves");
        assert!(texts(&of_source).contains(&"registry.npmjs.org".to_string()));
        assert!(!texts(&of_source).iter().any(|t| t.contains("pypi")));
        let mut elsewhere = task("https://github.com/o/r", None, Some("jira"));
        elsewhere.metadata.namespace = Some("other".into());
        let not_of_source = resolve(&elsewhere, &defaults, &sources).expect("resolves");
        assert!(texts(&not_of_source).iter().any(|t| t.contains("pypi")));
        let open = SourceEgresses::from([(
            "jira".to_string(),
            (
                "team".to_string(),
                SourceEgress {
                    mode: Some(EgressMode::Open),
                    ..Default::default()
                },
            ),
        )]);
        assert_eq!(
            resolve(
                &task("https://github.com/o/r", None, Some("jira")),
                &defaults,
                &open
            ),
            Ok(Network::Open)
        );
    }

    #[test]
    fn the_network_policy_allows_the_proxy_dns_and_cidrs_only() {
        let defaults = allow_list(&[]);
        let labels = BTreeMap::from([("recac.io/task".to_string(), "t".to_string())]);
        let owner = OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "t-1".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let policy = network_policy(
            &task("https://github.com/o/r", None, None),
            "t-1",
            &labels,
            owner,
            &rules(&["github.com", "10.0.0.0/8:5432"]),
            &defaults,
        );
        let spec = policy.spec.expect("spec");
        assert_eq!(spec.ingress, Some(Vec::new()));
        let egress = spec.egress.expect("egress");
        assert_eq!(egress.len(), 3, "{egress:?}");
        let proxy_port = &egress[0].ports.as_ref().expect("ports")[0];
        assert_eq!(proxy_port.port, Some(IntOrString::Int(3128)));
        let dns = &egress[1]
            .to
            .as_ref()
            .expect("DNS goes to the cluster's resolvers only")[0];
        assert_eq!(
            dns.pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get("k8s-app"))
                .map(String::as_str),
            Some("kube-dns")
        );
        let cidr = &egress[2].to.as_ref().expect("to")[0];
        assert_eq!(
            cidr.ip_block.as_ref().map(|b| b.cidr.as_str()),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            policy.metadata.owner_references.expect("owner")[0].kind,
            "Job"
        );
    }
}
