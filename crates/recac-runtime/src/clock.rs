//! The operator's wall clock, which tests can move forward (budget periods roll over at
//! midnight UTC; a test cannot wait for one).
//!
//! The shift is process-wide, like [`crate::failpoint`]: a test that moves the clock runs in
//! a test binary of its own.

use std::sync::atomic::{AtomicI64, Ordering};

use jiff::{SignedDuration, Timestamp};

static SHIFT_MILLIS: AtomicI64 = AtomicI64::new(0);

/// Now, as the operator's decisions about time see it.
pub fn now() -> Timestamp {
    let shift = SignedDuration::from_millis(SHIFT_MILLIS.load(Ordering::Relaxed));
    Timestamp::now()
        .checked_add(shift)
        .unwrap_or(Timestamp::MAX)
}

/// Tests only: moves [`now`] by `by` from the real time.
pub fn shift_for_tests(by: SignedDuration) {
    SHIFT_MILLIS.store(
        i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
        Ordering::Relaxed,
    );
}
