//! Faults to inject, per test.

use std::time::Duration;

/// What goes wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer this status (with `Retry-After` when set) instead of handling the call.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Wait before handling the call normally.
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
    /// Handle the call, then send a 200 whose JSON body is cut short.
    MalformedJson,
}

/// A fault and the calls it applies to.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    /// Only calls with this method (`GET`, `POST`…); `None` for any.
    pub method: Option<String>,
    /// Only calls whose path contains this text; `None` for any.
    pub path_contains: Option<String>,
    /// How many calls it hits; `None` for every call.
    pub times: Option<u32>,
    /// The chance (0 to 1) that a matching call is hit; `None` for every one.
    pub probability: Option<f64>,
}

impl Fault {
    pub fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            method: None,
            path_contains: None,
            times: Some(1),
            probability: None,
        }
    }

    /// 429 Too Many Requests with `Retry-After: seconds`.
    pub fn rate_limited(seconds: u64) -> Fault {
        Fault::new(FaultKind::Status {
            status: 429,
            retry_after: Some(seconds.to_string()),
        })
    }

    /// A bare status (e.g. 502, 503, 504, 500).
    pub fn status(status: u16) -> Fault {
        Fault::new(FaultKind::Status {
            status,
            retry_after: None,
        })
    }

    /// A status with a `Retry-After` header.
    pub fn status_retry_after(status: u16, seconds: u64) -> Fault {
        Fault::new(FaultKind::Status {
            status,
            retry_after: Some(seconds.to_string()),
        })
    }

    pub fn delay(d: Duration) -> Fault {
        Fault::new(FaultKind::Delay(d))
    }

    pub fn drop_connection() -> Fault {
        Fault::new(FaultKind::Drop)
    }

    pub fn malformed_json() -> Fault {
        Fault::new(FaultKind::MalformedJson)
    }

    /// Applies to `n` calls (default 1).
    pub fn times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }

    /// Applies to every matching call.
    pub fn always(mut self) -> Fault {
        self.times = None;
        self
    }

    /// Hits each matching call with chance `p` (for random failure rates; combine with
    /// [`Fault::always`]).
    pub fn sometimes(mut self, p: f64) -> Fault {
        self.probability = Some(p.clamp(0.0, 1.0));
        self
    }

    pub fn on_method(mut self, method: &str) -> Fault {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    pub fn on_path(mut self, contains: &str) -> Fault {
        self.path_contains = Some(contains.to_string());
        self
    }

    pub(crate) fn hits(&self, method: &str, path: &str) -> bool {
        self.times != Some(0)
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
            && self.probability.is_none_or(|p| rand::random::<f64>() < p)
    }
}
