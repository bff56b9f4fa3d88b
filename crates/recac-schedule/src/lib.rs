//! The schedule controller: each due time of an `AgentTaskSchedule` becomes exactly one
//! AgentTask, the way CronJob makes Jobs.
//!
//! - [`cron`]: cron expressions and IANA time zones, evaluated across daylight-saving changes
//!   (pure);
//! - [`clock`]: where "now" comes from (the system, or a hand-set clock in tests);
//! - [`decide`]: a schedule, its runs and now in; what to create, delete, skip and report,
//!   and when to look again, out (pure);
//! - [`controller`]: the component that observes the shared caches and acts.

pub mod clock;
pub mod controller;
pub mod cron;
pub mod decide;
pub mod metrics;

pub use clock::{Clock, ClockCell, ManualClock, SystemClock};
pub use controller::{FIELD_MANAGER, ScheduleCache, ScheduleController, ScheduleParts};
pub use metrics::ScheduleMetrics;
