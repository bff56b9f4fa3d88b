//! Faults injected between a kube client and a real apiserver, for tests of what a client
//! does when the network or the apiserver misbehaves: a paged list that fails part-way, a
//! watch connection that drops, a watch told its resource version is gone (410).
//!
//! Build a client with [`Faults::client`]; arm faults through the shared [`Faults`] handle
//! while the client runs. Every fault fires once per arming.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{StreamExt, TryStreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use tokio::sync::{Notify, watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body the faulty service returns.
pub type FaultBody = UnsyncBoxBody<bytes::Bytes, BoxError>;

/// The faults armed for one client, shared with the test.
#[derive(Default)]
pub struct Faults {
    /// Fail the next list request that carries a `continue` token after this many such
    /// requests have passed (0: the first continuation fails).
    fail_continuation_after: Mutex<Option<usize>>,
    /// Hold list requests after a failed one until [`Faults::release_lists`].
    hold_lists: Mutex<Option<Arc<Notify>>>,
    /// Watch responses end when this changes.
    cut: Mutex<Option<watch::Sender<u64>>>,
    /// Watch requests to answer with a 410 Gone event.
    gone: AtomicUsize,
    /// Lists failed by [`Faults::fail_list_after_pages`].
    failed_lists: AtomicU64,
    /// Watch responses ended by [`Faults::cut_watches`] and watches answered 410.
    cut_watches: AtomicU64,
    expired_watches: AtomicU64,
    failed: Notify,
    continuations: AtomicUsize,
    watches: AtomicU64,
    lists: AtomicU64,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        let faults = Self::default();
        *lock(&faults.cut) = Some(watch::channel(0).0);
        Arc::new(faults)
    }

    /// A client for `config` whose requests pass through these faults.
    pub fn client(self: &Arc<Self>, config: Config) -> Result<Client, kube::Error> {
        Ok(ClientBuilder::try_from(config)?
            .with_layer(&FaultLayer(self.clone()))
            .build())
    }

    /// The next paged list fails on its page `pages + 1` (after `pages` pages were served).
    pub fn fail_list_after_pages(&self, pages: usize) {
        *lock(&self.fail_continuation_after) = Some(pages.saturating_sub(1));
        self.continuations.store(0, Ordering::SeqCst);
    }

    /// List requests after a failed one wait until [`Faults::release_lists`] (for a test
    /// that changes objects between a failed list and the next).
    pub fn hold_lists_after_failure(&self) {
        *lock(&self.hold_lists) = Some(Arc::new(Notify::new()));
    }

    /// Completes when a list has failed as [`Faults::fail_list_after_pages`] asked.
    pub async fn list_failed(&self) {
        loop {
            let notified = self.failed.notified();
            if self.failed_lists.load(Ordering::SeqCst) > 0 {
                return;
            }
            notified.await;
        }
    }

    /// Lets held list requests through.
    pub fn release_lists(&self) {
        if let Some(hold) = lock(&self.hold_lists).take() {
            hold.notify_waiters();
        }
    }

    /// Ends every watch response open now, as a dropped connection would.
    pub fn cut_watches(&self) {
        if let Some(cut) = lock(&self.cut).as_ref() {
            cut.send_modify(|generation| *generation += 1);
            self.cut_watches.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Answers the next watch request with a 410 Gone error event (the resource version it
    /// asked for is too old), as the apiserver does after compaction.
    pub fn expire_next_watch(&self) {
        self.gone.fetch_add(1, Ordering::SeqCst);
    }

    /// What happened so far: requests seen and faults fired.
    pub fn summary(&self) -> String {
        format!(
            "{} list requests ({} failed part-way), {} watch requests ({} answered 410 Gone), {} cuts",
            self.lists.load(Ordering::SeqCst),
            self.failed_lists.load(Ordering::SeqCst),
            self.watches.load(Ordering::SeqCst),
            self.expired_watches.load(Ordering::SeqCst),
            self.cut_watches.load(Ordering::SeqCst),
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The tower layer of [`Faults`].
#[derive(Clone)]
pub struct FaultLayer(pub Arc<Faults>);

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
            faults: self.0.clone(),
        }
    }
}

/// The service of [`FaultLayer`]. Requests wait for the inner service one at a time only
/// until it is ready and has taken them; their responses run side by side.
#[derive(Clone)]
pub struct FaultService<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
    faults: Arc<Faults>,
}

async fn forward<S, B>(
    inner: &tokio::sync::Mutex<S>,
    request: Request<Body>,
) -> Result<Response<B>, BoxError>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    use tower::ServiceExt;
    let response = {
        let mut service = inner.lock().await;
        service.ready().await.map_err(Into::into)?.call(request)
    };
    response.await.map_err(Into::into)
}

enum Kind {
    Watch,
    List { continuation: bool },
    Other,
}

fn kind_of<B>(request: &Request<B>) -> Kind {
    if request.method() != http::Method::GET {
        return Kind::Other;
    }
    let query = request.uri().query().unwrap_or_default();
    let params: Vec<&str> = query.split('&').collect();
    if params.iter().any(|p| *p == "watch=true" || *p == "watch=1") {
        Kind::Watch
    } else if params
        .iter()
        .any(|p| p.starts_with("limit=") || p.starts_with("continue="))
    {
        Kind::List {
            continuation: params.iter().any(|p| p.starts_with("continue=")),
        }
    } else {
        Kind::Other
    }
}

impl<S, B> tower::Service<Request<Body>> for FaultService<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<FaultBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let faults = self.faults.clone();
        let kind = kind_of(&request);
        let inner = self.inner.clone();
        Box::pin(async move {
            match kind {
                Kind::List { continuation } => {
                    faults.lists.fetch_add(1, Ordering::SeqCst);
                    let hold = lock(&faults.hold_lists).clone();
                    if faults.failed_lists.load(Ordering::SeqCst) > 0
                        && let Some(hold) = hold
                    {
                        // A Notified future hears notify_waiters from its creation on.
                        let released = hold.notified();
                        if lock(&faults.hold_lists).is_some() {
                            released.await;
                        }
                    }
                    if continuation && should_fail(&faults) {
                        faults.failed_lists.fetch_add(1, Ordering::SeqCst);
                        faults.failed.notify_waiters();
                        return Ok(status(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "injected: the list failed part-way",
                        ));
                    }
                    passthrough(forward(&inner, request).await?)
                }
                Kind::Watch => {
                    faults.watches.fetch_add(1, Ordering::SeqCst);
                    let gone = faults
                        .gone
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if gone {
                        faults.expired_watches.fetch_add(1, Ordering::SeqCst);
                        return Ok(expired_watch());
                    }
                    let mut cut = lock(&faults.cut)
                        .as_ref()
                        .map(watch::Sender::subscribe)
                        .ok_or("no cut signal")?;
                    cut.borrow_and_update();
                    let response = forward(&inner, request).await?;
                    let (parts, body) = response.into_parts();
                    let frames = TryStreamExt::map_err(BodyStream::new(body), Into::into)
                        .take_until(async move {
                            let _ = cut.changed().await;
                        });
                    Ok(Response::from_parts(
                        parts,
                        BodyExt::boxed_unsync(StreamBody::new(frames)),
                    ))
                }
                Kind::Other => passthrough(forward(&inner, request).await?),
            }
        })
    }
}

fn should_fail(faults: &Faults) -> bool {
    let mut armed = lock(&faults.fail_continuation_after);
    let Some(after) = *armed else {
        return false;
    };
    let seen = faults.continuations.fetch_add(1, Ordering::SeqCst);
    if seen >= after {
        *armed = None;
        true
    } else {
        false
    }
}

fn passthrough<B>(response: Response<B>) -> Result<Response<FaultBody>, BoxError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        BodyExt::boxed_unsync(body.map_err(Into::into)),
    ))
}

fn status(code: StatusCode, message: &str) -> Response<FaultBody> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": "InternalError", "code": code.as_u16(),
    });
    let mut response = Response::new(BodyExt::boxed_unsync(
        Full::new(bytes::Bytes::from(body.to_string())).map_err(|never| match never {}),
    ));
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A watch answered as the apiserver answers one whose resource version was compacted: a
/// 200 response with one ERROR event carrying a 410 status.
fn expired_watch() -> Response<FaultBody> {
    let event = serde_json::json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "injected: too old resource version", "reason": "Expired", "code": 410,
        },
    });
    let mut line = event.to_string();
    line.push('\n');
    let mut response = Response::new(BodyExt::boxed_unsync(
        Full::new(bytes::Bytes::from(line)).map_err(|never| match never {}),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
