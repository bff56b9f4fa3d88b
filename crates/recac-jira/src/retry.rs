//! The retry decision, as a pure function: given what happened on a try,
//! wait how long, or give up.

use std::time::Duration;

/// What one try produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A reply with this status and, if present, the `Retry-After` header.
    Status {
        status: u16,
        retry_after: Option<&'a str>,
    },
    /// The connection could not be made (the request was not sent).
    ConnectError,
    /// The request timed out (it may have been processed).
    Timeout,
    /// The connection broke after the request was sent (it may have been processed).
    Broken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this wait.
    Retry(Duration),
    /// Do not try again.
    GiveUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, including the first.
    pub max_attempts: u32,
    /// First backoff step.
    pub base: Duration,
    /// Largest backoff step.
    pub cap: Duration,
    /// Longest `Retry-After` accepted; a longer one gives up at once.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// Parses `Retry-After`: seconds (what Jira sends) or an HTTP date. Fractions
/// are rounded up so that the wait is never shorter than asked.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, jiff::Timestamp::now())
}

/// [`parse_retry_after`] with the current time given, for an HTTP-date value.
pub fn parse_retry_after_at(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(f) = v.parse::<f64>() {
        return (f.is_finite() && (0.0..1e9).contains(&f))
            .then(|| Duration::from_secs(f.ceil() as u64));
    }
    // HTTP-date (RFC 9110 IMF-fixdate), e.g. "Wed, 21 Oct 2015 07:28:00 GMT".
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(v)
        .ok()?;
    let wait = now.duration_until(at);
    let millis = u64::try_from(wait.as_millis()).unwrap_or(0);
    Some(Duration::from_secs(millis.div_ceil(1000)))
}

impl RetryPolicy {
    /// Exponential backoff with "equal jitter": half the step fixed, half
    /// random; `jitter` in `[0, 1)`. `attempt` counts tries made so far (≥ 1).
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let step = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let jitter = jitter.clamp(0.0, 1.0);
        step.mul_f64(0.5 + jitter / 2.0)
    }

    /// Decides what to do after try number `attempt` (1-based).
    ///
    /// * 429 and 503: wait `Retry-After` (never less; a small random extra
    ///   spreads clients apart), or back off when the header is absent.
    /// * 502, 504, connect errors: back off. Timeouts and broken connections
    ///   only for idempotent requests (a POST might have been applied).
    /// * Anything else (other 4xx, 500, success): give up.
    pub fn decide(
        &self,
        outcome: Outcome<'_>,
        attempt: u32,
        idempotent: bool,
        jitter: f64,
    ) -> Decision {
        if attempt >= self.max_attempts {
            return Decision::GiveUp;
        }
        match outcome {
            Outcome::Status {
                status: 429 | 503,
                retry_after,
            } => {
                match retry_after.and_then(parse_retry_after) {
                    Some(wait) if wait > self.max_retry_after => Decision::GiveUp,
                    // Up to 10% (max 1 s) extra, never less than asked.
                    Some(wait) => {
                        let extra = wait
                            .mul_f64(0.1 * jitter.clamp(0.0, 1.0))
                            .min(Duration::from_secs(1));
                        Decision::Retry(wait + extra)
                    }
                    None => Decision::Retry(self.backoff(attempt, jitter)),
                }
            }
            Outcome::Status {
                status: 502 | 504, ..
            } if idempotent => Decision::Retry(self.backoff(attempt, jitter)),
            Outcome::ConnectError => Decision::Retry(self.backoff(attempt, jitter)),
            Outcome::Timeout | Outcome::Broken if idempotent => {
                Decision::Retry(self.backoff(attempt, jitter))
            }
            _ => Decision::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(status: u16, retry_after: Option<&str>) -> Outcome<'_> {
        Outcome::Status {
            status,
            retry_after,
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        for j in [0.0, 0.3, 0.999] {
            match p.decide(st(429, Some("7")), 1, false, j) {
                Decision::Retry(d) => assert!(
                    d >= Duration::from_secs(7) && d <= Duration::from_secs(8),
                    "{d:?}"
                ),
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(
            p.decide(st(503, Some("0")), 1, true, 0.0),
            Decision::Retry(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("1.2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("soon"), None);
        let now = jiff::Timestamp::from_second(1_445_412_470).expect("time");
        assert_eq!(
            parse_retry_after_at("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after_at("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn too_long_retry_after_gives_up() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(st(429, Some("3600")), 1, true, 0.5),
            Decision::GiveUp
        );
    }

    #[test]
    fn bounded_tries() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        assert!(matches!(
            p.decide(st(503, None), 2, true, 0.5),
            Decision::Retry(_)
        ));
        assert_eq!(p.decide(st(503, None), 3, true, 0.5), Decision::GiveUp);
        assert_eq!(
            p.decide(Outcome::ConnectError, 3, true, 0.5),
            Decision::GiveUp
        );
    }

    #[test]
    fn client_errors_not_retried() {
        let p = RetryPolicy::default();
        for s in [400, 401, 403, 404, 409, 410, 500, 200, 204] {
            assert_eq!(
                p.decide(st(s, Some("1")), 1, true, 0.5),
                Decision::GiveUp,
                "{s}"
            );
        }
    }

    #[test]
    fn non_idempotent_only_retried_when_not_applied() {
        let p = RetryPolicy::default();
        assert_eq!(p.decide(Outcome::Timeout, 1, false, 0.5), Decision::GiveUp);
        assert_eq!(p.decide(Outcome::Broken, 1, false, 0.5), Decision::GiveUp);
        assert_eq!(p.decide(st(502, None), 1, false, 0.5), Decision::GiveUp);
        assert!(matches!(
            p.decide(Outcome::ConnectError, 1, false, 0.5),
            Decision::Retry(_)
        ));
        assert!(matches!(
            p.decide(st(429, Some("1")), 1, false, 0.5),
            Decision::Retry(_)
        ));
        assert!(matches!(
            p.decide(st(504, None), 1, true, 0.5),
            Decision::Retry(_)
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(250));
        assert_eq!(p.backoff(3, 1.0), Duration::from_secs(2));
        assert_eq!(p.backoff(30, 1.0), Duration::from_secs(30));
        assert!(p.backoff(30, 0.0) >= Duration::from_secs(15));
    }
}
