//! The signal that allows components to write.
//!
//! Every replica keeps its caches warm; only while this signal says so do its components
//! run a term and write. A single replica is always allowed ([`Leadership::always`]); a
//! Lease-based election feeds the same signal ([`Leadership::from_receiver`]).

use tokio::sync::watch;

/// Whether this process may write now, and a way to wait for that to change.
#[derive(Clone, Debug)]
pub struct Leadership {
    allowed: watch::Receiver<bool>,
    // Keeps `always()`'s channel open for the life of every clone.
    _always: Option<std::sync::Arc<watch::Sender<bool>>>,
}

/// Sets a manual [`Leadership`] (tests, and the election's driver).
#[derive(Debug)]
pub struct LeadershipControl(watch::Sender<bool>);

impl LeadershipControl {
    pub fn set(&self, allowed: bool) {
        self.0.send_replace(allowed);
    }
}

impl Leadership {
    /// Always allowed: one replica, no election.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Self {
            allowed: rx,
            _always: Some(std::sync::Arc::new(tx)),
        }
    }

    /// Follows `allowed`; when its sender goes away, writing is no longer allowed.
    pub fn from_receiver(allowed: watch::Receiver<bool>) -> Self {
        Self {
            allowed,
            _always: None,
        }
    }

    /// A signal set by hand.
    pub fn manual(initial: bool) -> (Self, LeadershipControl) {
        let (tx, rx) = watch::channel(initial);
        (Self::from_receiver(rx), LeadershipControl(tx))
    }

    /// Whether writing is allowed now; never once the signal's sender is gone.
    pub fn is_allowed(&self) -> bool {
        self.allowed.has_changed().is_ok() && *self.allowed.borrow()
    }

    /// Completes once writing is allowed; never, if the signal's sender is gone.
    pub async fn wait_allowed(&mut self) {
        if self.allowed.wait_for(|allowed| *allowed).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Completes once writing is no longer allowed (or the signal's sender is gone).
    pub async fn wait_withdrawn(&mut self) {
        let _ = self.allowed.wait_for(|allowed| !*allowed).await;
    }
}
