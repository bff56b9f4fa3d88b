//! Where the schedule controller's "now" comes from.
//!
//! The operator reads the system clock. Tests hand the controller a [`ManualClock`] and move
//! it; each move wakes the controller to look at every schedule again, so a test never
//! sleeps until the next minute.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Changes each time the clock is set by hand; `None` for a clock that only runs.
    fn jumps(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that stands still until it is set or advanced.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
    jumps: watch::Sender<u64>,
}

impl ManualClock {
    pub fn new(now: Timestamp) -> Self {
        Self {
            now: Mutex::new(now),
            jumps: watch::channel(0).0,
        }
    }

    /// Sets the time (also backwards).
    pub fn set(&self, now: Timestamp) {
        if let Ok(mut current) = self.now.lock() {
            *current = now;
        }
        self.jumps.send_modify(|n| *n += 1);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let now = self.now();
        let later = jiff::SignedDuration::try_from(by)
            .ok()
            .and_then(|by| now.checked_add(by).ok())
            .unwrap_or(now);
        self.set(later);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.now
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|p| *p.into_inner())
    }

    fn jumps(&self) -> Option<watch::Receiver<u64>> {
        Some(self.jumps.subscribe())
    }
}

/// A clock that can be swapped for another after it was handed out (the operator hands
/// the system clock to the schedule controller at build time; a test swaps in its own).
#[derive(Clone)]
pub struct ClockCell(Arc<RwLock<Arc<dyn Clock>>>);

impl ClockCell {
    /// Starts as the system clock.
    pub fn system() -> Self {
        Self(Arc::new(RwLock::new(Arc::new(SystemClock))))
    }

    /// From now on, reads `clock`.
    pub fn set(&self, clock: Arc<dyn Clock>) {
        if let Ok(mut current) = self.0.write() {
            *current = clock;
        }
    }

    fn current(&self) -> Arc<dyn Clock> {
        self.0
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

impl std::fmt::Debug for ClockCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockCell")
    }
}

impl Clock for ClockCell {
    fn now(&self) -> Timestamp {
        self.current().now()
    }

    fn jumps(&self) -> Option<watch::Receiver<u64>> {
        self.current().jumps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_says_so() {
        let start: Timestamp = "2026-03-08T06:00:00Z".parse().expect("time");
        let clock = ManualClock::new(start);
        let mut jumps = clock.jumps().expect("a manual clock reports jumps");
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now().to_string(), "2026-03-08T06:01:30Z");
        assert!(jumps.has_changed().expect("open"));
        jumps.mark_unchanged();
        clock.set(start);
        assert_eq!(clock.now(), start);
        assert!(jumps.has_changed().expect("open"));
        assert!(SystemClock.jumps().is_none());

        let cell = ClockCell::system();
        assert!(cell.jumps().is_none());
        cell.set(Arc::new(clock));
        assert_eq!(cell.now(), start);
        assert!(cell.jumps().is_some());
    }
}
