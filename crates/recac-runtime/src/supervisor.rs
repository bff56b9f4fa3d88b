//! Runs every long-lived part of the process and owns its shutdown.
//!
//! Two kinds of parts:
//! - **background** parts (cache reflectors, the admin server) run for the whole process;
//! - **components** (the controllers) do the writing, and run in *terms*: a term starts when
//!   the leadership signal allows writing, with a fresh [`Term`], and is told to stop when the
//!   signal is withdrawn or the process shuts down. A term must return within the stop
//!   timeout once told.
//!
//! Any part that ends when nobody asked it to (returns, fails or panics) is fatal: the
//! supervisor records why in [`Health`], stops the others and returns the reason, so the
//! process exits non-zero and Kubernetes restarts it.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::leadership::Leadership;

/// Why a component's term failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ComponentError(pub String);

impl ComponentError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Why the process must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part} {why}")]
pub struct Fatal {
    /// The part that ended: `component task-controller`, `cache agenttasks`, ...
    pub part: String,
    pub why: String,
}

/// One term of a component: from being allowed to write until told to stop.
///
/// Everything a component keeps for one term (retry counters, reservations, dispatch
/// memory) belongs in the future returned by [`Component::run`], so it starts fresh each term.
#[derive(Clone, Debug)]
pub struct Term {
    /// Counts the terms of this component in this process, from 1.
    pub number: u64,
    stop: CancellationToken,
}

impl Term {
    /// Completes when the term must end.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// A future that completes when the term must end, owning what it needs.
    pub fn stop_signal(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        self.stop.clone().cancelled_owned()
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// A part of the operator that writes: runs one term at a time.
pub trait Component: Send + Sync + 'static {
    /// A short name for logs, health and metrics (`task-controller`).
    fn name(&self) -> &str;

    /// Runs one term until `term` is stopped. Returning before that is a failure.
    fn run(self: Arc<Self>, term: Term) -> BoxFuture<'static, Result<(), ComponentError>>;
}

/// What `/healthz` reports: every part's state.
#[derive(Clone, Default)]
pub struct Health {
    parts: Arc<Mutex<BTreeMap<String, PartState>>>,
}

/// The state of one supervised part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartState {
    /// Running (a background part, or a component in a term).
    Running,
    /// A component waiting to be allowed to write.
    Standby,
    /// Ended without being asked to; the process is stopping.
    Failed(String),
}

impl Health {
    fn set(&self, part: &str, state: PartState) {
        if let Ok(mut parts) = self.parts.lock() {
            parts.insert(part.to_string(), state);
        }
    }

    /// `Ok` with a summary when no part failed; `Err` naming each failed part otherwise.
    pub fn check(&self) -> Result<String, String> {
        let parts = self.parts.lock().map(|p| p.clone()).unwrap_or_default();
        let failed: Vec<String> = parts
            .iter()
            .filter_map(|(name, state)| match state {
                PartState::Failed(why) => Some(format!("{name}: {why}")),
                _ => None,
            })
            .collect();
        if failed.is_empty() {
            let summary: Vec<String> = parts
                .iter()
                .map(|(name, state)| {
                    let state = match state {
                        PartState::Running => "running",
                        PartState::Standby => "standby",
                        PartState::Failed(_) => "failed",
                    };
                    format!("{name}: {state}")
                })
                .collect();
            Ok(summary.join("\n"))
        } else {
            Err(failed.join("\n"))
        }
    }

    pub fn state(&self, part: &str) -> Option<PartState> {
        self.parts.lock().ok()?.get(part).cloned()
    }
}

type Background = (String, BoxFuture<'static, Result<(), String>>);

/// Runs background parts and components; see the module docs.
pub struct Supervisor {
    health: Health,
    leadership: Leadership,
    stop_timeout: Duration,
    background: Vec<Background>,
    components: Vec<Arc<dyn Component>>,
    gate: Option<Shared<BoxFuture<'static, ()>>>,
}

impl Supervisor {
    /// `stop_timeout` bounds how long a term may take to stop once told.
    pub fn new(leadership: Leadership, health: Health, stop_timeout: Duration) -> Self {
        Self {
            health,
            leadership,
            stop_timeout,
            background: Vec::new(),
            components: Vec::new(),
            gate: None,
        }
    }

    /// Holds every component's first term until `ready` completes (the caches are warm),
    /// so no term decides on a cold cache.
    pub fn start_terms_after(&mut self, ready: impl Future<Output = ()> + Send + 'static) {
        self.gate = Some(ready.boxed().shared());
    }

    /// Adds a part that runs for the whole process; it ending at all is fatal.
    /// `part` names it in logs and health (`cache agenttasks`, `admin server`).
    pub fn background(
        &mut self,
        part: impl Into<String>,
        run: impl Future<Output = Result<(), String>> + Send + 'static,
    ) {
        self.background.push((part.into(), Box::pin(run)));
    }

    pub fn component(&mut self, component: Arc<dyn Component>) {
        self.components.push(component);
    }

    /// Runs everything until `shutdown` completes (a clean stop) or a part ends unexpectedly
    /// (the returned [`Fatal`] says which and why). Returns once every part stopped.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Fatal> {
        let stopping = CancellationToken::new();
        let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<Fatal>();
        // Every spawned part is aborted if this future is dropped (a crash in tests, or a
        // caller's timeout), so nothing outlives the supervisor.
        let mut background: Vec<AbortOnDrop<()>> = Vec::new();
        for (part, run) in self.background {
            self.health.set(&part, PartState::Running);
            let fatal_tx = fatal_tx.clone();
            let stopping = stopping.clone();
            let health = self.health.clone();
            let task = AbortOnDrop(tokio::spawn(run));
            background.push(AbortOnDrop(tokio::spawn(async move {
                let mut task = task;
                let outcome = (&mut task.0).await;
                if stopping.is_cancelled() {
                    return;
                }
                let why = match outcome {
                    Ok(Ok(())) => "ended unexpectedly".to_string(),
                    Ok(Err(err)) => format!("failed: {err}"),
                    Err(join) => panic_text(join),
                };
                health.set(&part, PartState::Failed(why.clone()));
                let _ = fatal_tx.send(Fatal { part, why });
            })));
        }
        let mut terms: Vec<AbortOnDrop<()>> = Vec::new();
        for component in self.components {
            let run = TermLoop {
                part: format!("component {}", component.name()),
                component,
                leadership: self.leadership.clone(),
                health: self.health.clone(),
                stopping: stopping.clone(),
                stop_timeout: self.stop_timeout,
                gate: self.gate.clone(),
            };
            let fatal_tx = fatal_tx.clone();
            terms.push(AbortOnDrop(tokio::spawn(async move {
                if let Err(fatal) = run.run().await {
                    let _ = fatal_tx.send(fatal);
                }
            })));
        }
        drop(fatal_tx);

        let fatal = tokio::select! {
            _ = shutdown => None,
            fatal = fatal_rx.recv() => fatal,
        };
        match &fatal {
            Some(fatal) => {
                error!(part = %fatal.part, why = %fatal.why, "a part of the operator ended; stopping")
            }
            None => info!("shutting down"),
        }
        stopping.cancel();
        // Terms get their stop timeout (and a little more) to finish.
        let grace = self.stop_timeout + Duration::from_secs(1);
        let all_terms = futures::future::join_all(terms.iter_mut().map(|t| &mut t.0));
        if tokio::time::timeout(grace, all_terms).await.is_err() {
            warn!("a component did not stop within {grace:?}");
        }
        // A later fatal (a term that would not stop) is reported when nothing else was.
        let fatal = match fatal {
            Some(fatal) => Some(fatal),
            None => fatal_rx.try_recv().ok(),
        };
        drop(terms);
        drop(background);
        match fatal {
            Some(fatal) => Err(fatal),
            None => Ok(()),
        }
    }
}

struct TermLoop {
    part: String,
    component: Arc<dyn Component>,
    leadership: Leadership,
    health: Health,
    stopping: CancellationToken,
    stop_timeout: Duration,
    gate: Option<Shared<BoxFuture<'static, ()>>>,
}

impl TermLoop {
    async fn run(self) -> Result<(), Fatal> {
        let mut leadership = self.leadership.clone();
        let mut number = 0;
        if let Some(gate) = self.gate.clone() {
            self.health.set(&self.part, PartState::Standby);
            tokio::select! {
                _ = self.stopping.cancelled() => return Ok(()),
                _ = gate => {}
            }
        }
        loop {
            self.health.set(&self.part, PartState::Standby);
            tokio::select! {
                _ = self.stopping.cancelled() => return Ok(()),
                _ = leadership.wait_allowed() => {}
            }
            number += 1;
            let stop = self.stopping.child_token();
            let term = Term {
                number,
                stop: stop.clone(),
            };
            info!(part = %self.part, term = number, "term starts");
            self.health.set(&self.part, PartState::Running);
            let mut guard = AbortOnDrop(tokio::spawn(self.component.clone().run(term)));
            let handle = &mut guard.0;
            let told = tokio::select! {
                outcome = &mut *handle => {
                    let why = match outcome {
                        Ok(Ok(())) => "ended its term unexpectedly".to_string(),
                        Ok(Err(err)) => format!("failed: {err}"),
                        Err(join) => panic_text(join),
                    };
                    if self.stopping.is_cancelled() {
                        return Ok(());
                    }
                    return Err(self.fail(why));
                }
                _ = self.stopping.cancelled() => "the process is stopping",
                _ = leadership.wait_withdrawn() => "leadership was withdrawn",
            };
            stop.cancel();
            match tokio::time::timeout(self.stop_timeout, &mut *handle).await {
                Ok(Ok(Ok(()))) => info!(part = %self.part, term = number, "term stopped: {told}"),
                Ok(Ok(Err(err))) => {
                    warn!(part = %self.part, term = number, error = %err, "term stopped with an error: {told}")
                }
                Ok(Err(join)) => return Err(self.fail(panic_text(join))),
                Err(_) => {
                    handle.abort();
                    return Err(self.fail(format!(
                        "did not stop within {:?} after {told}",
                        self.stop_timeout
                    )));
                }
            }
            if self.stopping.is_cancelled() {
                return Ok(());
            }
        }
    }

    fn fail(&self, why: String) -> Fatal {
        self.health.set(&self.part, PartState::Failed(why.clone()));
        Fatal {
            part: self.part.clone(),
            why,
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_text(join: tokio::task::JoinError) -> String {
    if join.is_cancelled() {
        return "was cancelled".into();
    }
    let payload: Box<dyn Any + Send> = join.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    format!("panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A component whose term behaves as `mode` says.
    struct Scripted {
        mode: &'static str,
        terms: AtomicU64,
        fresh_state_per_term: Mutex<Vec<u64>>,
    }

    impl Scripted {
        fn new(mode: &'static str) -> Arc<Self> {
            Arc::new(Self {
                mode,
                terms: AtomicU64::new(0),
                fresh_state_per_term: Mutex::new(Vec::new()),
            })
        }
    }

    impl Component for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        fn run(self: Arc<Self>, term: Term) -> BoxFuture<'static, Result<(), ComponentError>> {
            Box::pin(async move {
                self.terms.fetch_add(1, Ordering::SeqCst);
                let mut per_term_counter = 0u64;
                per_term_counter += 1;
                if let Ok(mut seen) = self.fresh_state_per_term.lock() {
                    seen.push(per_term_counter);
                }
                match self.mode {
                    "panic" => panic!("boom in the reconciler"),
                    "return" => Ok(()),
                    "error" => Err(ComponentError::new("its watch ended")),
                    "stuck" => {
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                    _ => {
                        term.stopped().await;
                        Ok(())
                    }
                }
            })
        }
    }

    async fn outcome_of(component: Arc<Scripted>) -> (Result<(), Fatal>, Health) {
        let health = Health::default();
        let mut supervisor = Supervisor::new(
            Leadership::always(),
            health.clone(),
            Duration::from_millis(200),
        );
        supervisor.component(component);
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            supervisor.run(std::future::pending::<()>()),
        )
        .await
        .expect("the supervisor returns on a failed part");
        (result, health)
    }

    #[tokio::test]
    async fn a_panicking_component_is_fatal_with_its_message() {
        let (result, health) = outcome_of(Scripted::new("panic")).await;
        let fatal = result.expect_err("fatal");
        assert_eq!(fatal.part, "component scripted");
        assert!(fatal.why.contains("boom in the reconciler"), "{fatal}");
        let unhealthy = health.check().expect_err("unhealthy");
        assert!(unhealthy.contains("panicked: boom"), "{unhealthy}");
    }

    #[tokio::test]
    async fn a_component_that_returns_or_fails_is_fatal() {
        let (result, _) = outcome_of(Scripted::new("return")).await;
        assert!(result.expect_err("fatal").why.contains("unexpectedly"));
        let (result, _) = outcome_of(Scripted::new("error")).await;
        assert!(result.expect_err("fatal").why.contains("its watch ended"));
    }

    #[tokio::test]
    async fn a_background_part_that_ends_is_fatal() {
        let health = Health::default();
        let mut supervisor = Supervisor::new(
            Leadership::always(),
            health.clone(),
            Duration::from_millis(200),
        );
        supervisor.component(Scripted::new("wait"));
        supervisor.background("cache jobs", async {
            Err("watch stream ended".to_string())
        });
        let fatal = supervisor
            .run(std::future::pending::<()>())
            .await
            .expect_err("fatal");
        assert_eq!(fatal.part, "cache jobs");
        assert!(fatal.why.contains("watch stream ended"));
        assert!(health.check().is_err());
    }

    #[tokio::test]
    async fn a_clean_shutdown_stops_every_term() {
        let component = Scripted::new("wait");
        let health = Health::default();
        let mut supervisor = Supervisor::new(
            Leadership::always(),
            health.clone(),
            Duration::from_millis(500),
        );
        supervisor.component(component.clone());
        let result = supervisor
            .run(tokio::time::sleep(Duration::from_millis(100)))
            .await;
        assert_eq!(result, Ok(()));
        assert_eq!(component.terms.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_term_that_will_not_stop_is_fatal() {
        let component = Scripted::new("stuck");
        let mut supervisor = Supervisor::new(
            Leadership::always(),
            Health::default(),
            Duration::from_millis(100),
        );
        supervisor.component(component);
        let fatal = supervisor
            .run(tokio::time::sleep(Duration::from_millis(50)))
            .await
            .expect_err("fatal");
        assert!(fatal.why.contains("did not stop within"), "{fatal}");
    }

    #[tokio::test]
    async fn terms_follow_leadership_with_fresh_state() {
        let (leadership, control) = Leadership::manual(false);
        let component = Scripted::new("wait");
        let health = Health::default();
        let mut supervisor =
            Supervisor::new(leadership, health.clone(), Duration::from_millis(500));
        supervisor.component(component.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(supervisor.run(async move {
            let _ = stop_rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            component.terms.load(Ordering::SeqCst),
            0,
            "standby writes nothing"
        );
        assert_eq!(health.state("component scripted"), Some(PartState::Standby));
        for expected in 1..=3 {
            control.set(true);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(component.terms.load(Ordering::SeqCst), expected);
            assert_eq!(health.state("component scripted"), Some(PartState::Running));
            control.set(false);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(health.state("component scripted"), Some(PartState::Standby));
        }
        let seen = component
            .fresh_state_per_term
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        assert_eq!(seen, vec![1, 1, 1]);
        let _ = stop_tx.send(());
        assert_eq!(run.await.expect("joins"), Ok(()));
    }
}
