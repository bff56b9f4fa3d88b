//! When a ticket's live comment is written (pure): changes that come close together are
//! one write, one ticket's comment is written at most once per interval, and a text equal
//! to the one written last is not sent at all.

use std::time::{Duration, Instant};

/// How long a change waits for the changes that usually follow it (a Job's pod starting
/// right after the Job, a status written right after a phase) before it is written.
pub const SETTLE: Duration = Duration::from_millis(250);

/// The limits of one ticket's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// The least time between two writes (`feedback.editIntervalSeconds`).
    pub interval: Duration,
    /// How long a change waits for more ([`SETTLE`]).
    pub settle: Duration,
}

impl Pacing {
    pub fn every(interval: Duration) -> Pacing {
        Pacing {
            interval,
            settle: SETTLE,
        }
    }
}

/// What to do about the wanted text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// The comment already says it.
    Unchanged,
    Now,
    /// Not before this instant; ask again then (with whatever the text is by then).
    At(Instant),
}

/// Whether and when to write the text whose version is `wanted`, given the version written
/// last (`None`: unknown or no comment yet), when the last write was, and since when the
/// wanted text has differed from the written one.
pub fn decide(
    written: Option<&str>,
    wanted: &str,
    last_write: Option<Instant>,
    changed_since: Instant,
    now: Instant,
    pacing: Pacing,
) -> Write {
    if written == Some(wanted) {
        return Write::Unchanged;
    }
    let settled = changed_since + pacing.settle;
    let allowed = match last_write {
        Some(last) => settled.max(last + pacing.interval),
        None => settled,
    };
    if allowed <= now {
        Write::Now
    } else {
        Write::At(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACING: Pacing = Pacing {
        interval: Duration::from_secs(2),
        settle: Duration::from_millis(250),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_same_text_is_never_written_again() {
        let t0 = Instant::now();
        assert_eq!(
            decide(Some("v1"), "v1", None, t0, t0 + ms(10_000), PACING),
            Write::Unchanged
        );
    }

    #[test]
    fn a_first_change_waits_only_for_the_burst_to_settle() {
        let t0 = Instant::now();
        assert_eq!(
            decide(None, "v1", None, t0, t0 + ms(100), PACING),
            Write::At(t0 + ms(250))
        );
        assert_eq!(
            decide(None, "v1", None, t0, t0 + ms(250), PACING),
            Write::Now
        );
    }

    #[test]
    fn a_burst_of_changes_is_one_write() {
        // Changes at 0, 100 and 200 ms, each asking with the text of the moment: the first
        // write is at 250 ms with the last text. (Later than now, so that a minute before
        // it is an instant too.)
        let t0 = Instant::now() + ms(120_000);
        let asks = [(ms(0), "v1"), (ms(100), "v2"), (ms(200), "v3")];
        for (after, version) in asks {
            assert_eq!(
                decide(
                    Some("v0"),
                    version,
                    Some(t0 - ms(60_000)),
                    t0,
                    t0 + after,
                    PACING
                ),
                Write::At(t0 + ms(250)),
                "{version}"
            );
        }
        assert_eq!(
            decide(
                Some("v0"),
                "v3",
                Some(t0 - ms(60_000)),
                t0,
                t0 + ms(250),
                PACING
            ),
            Write::Now
        );
    }

    #[test]
    fn at_most_one_write_per_interval() {
        let written_at = Instant::now();
        // A change 300 ms after a write waits until the interval has passed.
        let changed = written_at + ms(300);
        assert_eq!(
            decide(
                Some("v1"),
                "v2",
                Some(written_at),
                changed,
                changed + ms(300),
                PACING
            ),
            Write::At(written_at + ms(2000))
        );
        assert_eq!(
            decide(
                Some("v1"),
                "v2",
                Some(written_at),
                changed,
                written_at + ms(2000),
                PACING
            ),
            Write::Now
        );
        // Long after the last write, only the settling counts.
        let late = written_at + ms(60_000);
        assert_eq!(
            decide(Some("v1"), "v2", Some(written_at), late, late, PACING),
            Write::At(late + ms(250))
        );
    }
}
