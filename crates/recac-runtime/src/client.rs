//! The kube client every component shares: API requests counted in one place, and writes
//! fenced by the leadership signal.

use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Method, Request};
use kube::client::ClientBuilder;
use kube::{Client, Config};

use crate::leadership::Leadership;
use crate::metrics::{ApiRequestCounter, CountRequestsLayer};

/// A client for `config` whose every request is counted by `counter`.
pub fn counted_client(config: Config, counter: ApiRequestCounter) -> Result<Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&CountRequestsLayer(counter))
        .build())
}

/// A counted client that refuses to send a write (create, update, patch, delete) while
/// `leadership` does not allow writing: a write that would start after leadership is lost
/// fails before it leaves the process. Refused writes are not counted as API requests.
pub fn fenced_client(
    config: Config,
    counter: ApiRequestCounter,
    leadership: Leadership,
) -> Result<Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&CountRequestsLayer(counter))
        .with_layer(&FenceWritesLayer(leadership))
        .build())
}

/// Reads the kubeconfig (or the in-cluster config) and builds a counted client.
pub async fn default_counted_client(counter: ApiRequestCounter) -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    counted_client(config, counter)
}

/// The error of a write refused by the fence.
#[derive(Debug, thiserror::Error)]
#[error("this replica is not the leader; the {method} {path} was not sent")]
pub struct NotLeader {
    method: Method,
    path: String,
}

/// Whether `error` is a write refused because this replica does not lead.
pub fn is_not_leader(error: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = source {
        if err.is::<NotLeader>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A tower layer that refuses writes while the leadership signal does not allow them.
#[derive(Clone)]
pub struct FenceWritesLayer(pub Leadership);

impl<S> tower::Layer<S> for FenceWritesLayer {
    type Service = FenceWrites<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FenceWrites {
            inner,
            leadership: self.0.clone(),
        }
    }
}

/// The service of [`FenceWritesLayer`].
#[derive(Clone)]
pub struct FenceWrites<S> {
    inner: S,
    leadership: Leadership,
}

impl<S, B> tower::Service<Request<B>> for FenceWrites<S>
where
    S: tower::Service<Request<B>>,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<S::Response, tower::BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let write = !matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        if write && !self.leadership.is_allowed() {
            let refused = NotLeader {
                method: request.method().clone(),
                path: request.uri().path().to_string(),
            };
            return async move { Err(Box::new(refused) as tower::BoxError) }.boxed();
        }
        let call = self.inner.call(request);
        async move { call.await.map_err(Into::into) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    fn request(method: Method) -> Request<()> {
        Request::builder()
            .method(method)
            .uri("/apis/batch/v1/namespaces/ns/jobs")
            .body(())
            .expect("request")
    }

    #[tokio::test]
    async fn writes_wait_for_leadership_and_reads_never_do() {
        let (leadership, control) = Leadership::manual(false);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        let inner = tower::service_fn(move |_: Request<()>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(()) }
        });
        let mut fenced = FenceWritesLayer(leadership).layer(inner);
        for method in [Method::POST, Method::PATCH, Method::PUT, Method::DELETE] {
            let refused = fenced
                .ready()
                .await
                .expect("ready")
                .call(request(method))
                .await
                .expect_err("refused");
            assert!(refused.is::<NotLeader>(), "{refused}");
        }
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 0);
        fenced
            .ready()
            .await
            .expect("ready")
            .call(request(Method::GET))
            .await
            .expect("reads pass");
        control.set(true);
        fenced
            .ready()
            .await
            .expect("ready")
            .call(request(Method::POST))
            .await
            .expect("writes pass while leading");
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(control);
        assert!(
            fenced
                .ready()
                .await
                .expect("ready")
                .call(request(Method::POST))
                .await
                .is_err(),
            "no writes once the signal is gone"
        );
    }
}
