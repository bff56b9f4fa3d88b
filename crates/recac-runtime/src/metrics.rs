//! The process's metrics registry, and the one place Kubernetes API requests are counted.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Method, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Metric, Registry};

/// The registry every component registers its metrics in; `/metrics` renders it.
#[derive(Clone, Default)]
pub struct MetricsRegistry(Arc<Mutex<Registry>>);

impl MetricsRegistry {
    /// Registers `metric` as `name` (a counter's samples get the `_total` suffix).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut registry) = self.0.lock() {
            registry.register(name, help, metric);
        }
    }

    /// Registers a collector that computes its metrics at each scrape.
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        if let Ok(mut registry) = self.0.lock() {
            registry.register_collector(collector);
        }
    }

    /// The OpenMetrics text of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.0.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

/// Labels of `recac_api_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// The resource, with its subresource: `jobs`, `agenttasks/status`, `pods/log`, `events`.
    pub resource: String,
}

/// Counts every request a kube client makes, by verb and resource.
#[derive(Clone)]
pub struct ApiRequestCounter {
    requests: Family<ApiRequestLabels, Counter>,
}

impl ApiRequestCounter {
    /// Registers `recac_api_requests_total` in `registry`.
    pub fn register(registry: &MetricsRegistry) -> Self {
        let requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "recac_api_requests",
            "Kubernetes API requests made by the operator, by verb and resource (watch = one watch request, not its events).",
            requests.clone(),
        );
        Self { requests }
    }

    fn count<B>(&self, request: &Request<B>) {
        let labels = classify(request.method(), request.uri());
        self.requests.get_or_create(&labels).inc();
    }
}

/// The verb and resource of one API request, from its method and path.
pub fn classify(method: &Method, uri: &http::Uri) -> ApiRequestLabels {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/group/version/...
    let rest: &[&str] = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or_default(),
        Some(&"apis") => segments.get(3..).unwrap_or_default(),
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _namespace, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, name, subresource) = match rest {
        [] => ("other".to_string(), None, None),
        [resource] => (resource.to_string(), None, None),
        [resource, name] => (resource.to_string(), Some(*name), None),
        [resource, name, sub, ..] => (resource.to_string(), Some(*name), Some(*sub)),
    };
    let resource = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource,
    };
    let watching = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *method {
        Method::GET if watching => "watch",
        Method::GET if name.is_some() => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    ApiRequestLabels {
        verb: verb.to_string(),
        resource,
    }
}

/// A tower layer for [`kube::client::ClientBuilder::with_layer`] that counts each request.
#[derive(Clone)]
pub struct CountRequestsLayer(pub ApiRequestCounter);

impl<S> tower::Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests {
            inner,
            counter: self.0.clone(),
        }
    }
}

/// The service of [`CountRequestsLayer`].
#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
    counter: ApiRequestCounter,
}

impl<S, B> tower::Service<Request<B>> for CountRequests<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.counter.count(&request);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(method: Method, uri: &str) -> (String, String) {
        let l = classify(&method, &uri.parse().expect("uri"));
        (l.verb, l.resource)
    }

    #[test]
    fn requests_are_classified_by_verb_and_resource() {
        let cases = [
            (
                Method::POST,
                "/apis/batch/v1/namespaces/ns/jobs?",
                ("create", "jobs"),
            ),
            (
                Method::GET,
                "/apis/batch/v1/namespaces/ns/jobs/j1",
                ("get", "jobs"),
            ),
            (
                Method::GET,
                "/apis/batch/v1/namespaces/ns/jobs?labelSelector=a",
                ("list", "jobs"),
            ),
            (
                Method::GET,
                "/apis/batch/v1/jobs?watch=true&resourceVersion=1",
                ("watch", "jobs"),
            ),
            (
                Method::PATCH,
                "/apis/recac.io/v1alpha1/namespaces/ns/agenttasks/t/status?fieldManager=x",
                ("patch", "agenttasks/status"),
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/ns/events",
                ("create", "events"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ns/pods/p/log?tailLines=5",
                ("get", "pods/log"),
            ),
            (Method::GET, "/api/v1/namespaces/ns", ("get", "namespaces")),
            (
                Method::DELETE,
                "/apis/batch/v1/namespaces/ns/jobs/j",
                ("delete", "jobs"),
            ),
            (Method::GET, "/version", ("list", "other")),
        ];
        for (method, uri, (verb, resource)) in cases {
            assert_eq!(
                labels(method, uri),
                (verb.to_string(), resource.to_string()),
                "{uri}"
            );
        }
    }

    #[test]
    fn the_registry_renders_openmetrics_with_the_known_names() {
        let registry = MetricsRegistry::default();
        let counter = ApiRequestCounter::register(&registry);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/apis/batch/v1/namespaces/ns/jobs")
            .body(())
            .expect("request");
        counter.count(&request);
        counter.count(&request);
        let text = registry.encode();
        assert!(
            text.contains("recac_api_requests_total{verb=\"create\",resource=\"jobs\"} 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
