//! Cron expressions as CronJob reads them, evaluated in an IANA time zone.
//!
//! Five fields (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of
//! week 0-7 or SUN-SAT, 7 being Sunday too), each a comma-separated list of `*`, values,
//! ranges `a-b` and steps `*/n`, `a-b/n`, `a/n` (from `a` to the field's end); `?` means
//! `*` in the two day fields. Or a macro: `@yearly` (`@annually`), `@monthly`, `@weekly`,
//! `@daily` (`@midnight`), `@hourly`. When both day fields are restricted (neither starts
//! with `*` or `?`), a day matching either is due, as in every cron.
//!
//! Due times are wall-clock times in the zone. Across daylight-saving changes:
//! - a wall-clock time that does not exist that day (spring forward) is due once, right
//!   after the change (02:30 in a 02:00→03:00 gap is due at 03:30 in the new offset);
//! - a wall-clock time that occurs twice (fall back) is due once, at its first occurrence.
//!
//! So every matching wall-clock time is due exactly once.

use std::sync::OnceLock;

use jiff::civil::{Date, DateTime};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Timestamp, ToSpan};

/// Why an expression is not a schedule; the text says which field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(pub String);

/// Why a time zone name is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a time zone in the IANA time zone database (for example Europe/Berlin, America/New_York or UTC)"
)]
pub struct ZoneError(pub String);

/// How far apart a wall-clock time and its instant can move at a zone's offset change, at
/// most (real zones change by an hour or two; three leaves room).
const SHIFT: SignedDuration = SignedDuration::from_hours(3);
/// How many days a search looks ahead (or back) before it says "never": nine years covers a
/// February 29th across a skipped leap year (2100).
const SEARCH_DAYS: i32 = 366 * 9;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    question: bool,
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    question: false,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    question: false,
};
const DAY_OF_MONTH: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
    question: true,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    question: false,
};
const DAY_OF_WEEK: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    question: true,
};

/// A parsed cron expression (no time zone yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Day of month or day of week unrestricted (`*` or `?` first): both must match.
    any_day_field_star: bool,
}

/// A cron expression read in a time zone: what decisions evaluate.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

/// Parses a cron expression or macro.
pub fn parse(expression: &str) -> Result<Cron, CronError> {
    let text = expression.trim();
    let expanded = match text.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other if other.starts_with('@') => {
            return Err(CronError(format!(
                "{text:?} is not a known macro (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
            )));
        }
        _ => text,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(CronError(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        )));
    }
    let days_of_week = parse_field(fields[4], DAY_OF_WEEK)?;
    // 7 is Sunday too.
    let days_of_week = (days_of_week & 0x7f) | ((days_of_week >> 7) & 1);
    let star = |f: &str| f.starts_with('*') || f.starts_with('?');
    Ok(Cron {
        minutes: parse_field(fields[0], MINUTE)?,
        hours: parse_field(fields[1], HOUR)?,
        days_of_month: parse_field(fields[2], DAY_OF_MONTH)?,
        months: parse_field(fields[3], MONTH)?,
        days_of_week,
        any_day_field_star: star(fields[2]) || star(fields[4]),
    })
}

fn parse_field(text: &str, field: Field) -> Result<u64, CronError> {
    let error = |what: String| CronError(format!("{} field {text:?}: {what}", field.name));
    let mut bits = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(error("has an empty list item".into()));
        }
        let (base, step) = match part.split_once('/') {
            Some((base, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| error(format!("step {step:?} is not a number")))?;
                if step == 0 {
                    return Err(error("a step must be at least 1".into()));
                }
                (base, Some(step))
            }
            None => (part, None),
        };
        let (low, high) = if base == "*" || base == "?" {
            if base == "?" && !field.question {
                return Err(error(
                    "'?' is only allowed in the day-of-month and day-of-week fields".into(),
                ));
            }
            (field.min, field.max)
        } else if let Some((a, b)) = base.split_once('-') {
            let (a, b) = (
                value(a, field).map_err(error)?,
                value(b, field).map_err(error)?,
            );
            if a > b {
                return Err(error(format!("the range {base} runs backwards")));
            }
            (a, b)
        } else {
            let a = value(base, field).map_err(error)?;
            // `a/n` runs from a to the field's end.
            (a, if step.is_some() { field.max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn value(text: &str, field: Field) -> Result<u32, String> {
    if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        return Ok(i as u32 + if field.min == 1 { 1 } else { 0 });
    }
    let v: u32 = text.parse().map_err(|_| {
        if field.names.is_empty() {
            format!("{text:?} is not a number")
        } else {
            format!(
                "{text:?} is neither a number nor one of {}",
                field.names.join(", ")
            )
        }
    })?;
    if v < field.min || v > field.max {
        return Err(format!("{v} is out of range {}-{}", field.min, field.max));
    }
    Ok(v)
}

fn bundled() -> &'static TimeZoneDatabase {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

/// The zone named `name` (unset: UTC), from the system's tz database or the bundled one.
pub fn zone(name: Option<&str>) -> Result<TimeZone, ZoneError> {
    let Some(name) = name else {
        return Ok(TimeZone::UTC);
    };
    if name.is_empty() || name.eq_ignore_ascii_case("local") || name.starts_with('/') {
        return Err(ZoneError(name.to_string()));
    }
    jiff::tz::db()
        .get(name)
        .or_else(|_| bundled().get(name))
        .map_err(|_| ZoneError(name.to_string()))
}

impl Cron {
    fn day_matches(&self, date: Date) -> bool {
        let month = self.months & (1 << date.month() as u32) != 0;
        let dom = self.days_of_month & (1 << date.day() as u32) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset() as u32) != 0;
        month
            && if self.any_day_field_star {
                dom && dow
            } else {
                dom || dow
            }
    }

    fn times(&self) -> impl DoubleEndedIterator<Item = (i8, i8)> + '_ {
        (0i8..24)
            .filter(|h| self.hours & (1 << *h as u32) != 0)
            .flat_map(move |h| {
                (0i8..60)
                    .filter(move |m| self.minutes & (1 << *m as u32) != 0)
                    .map(move |m| (h, m))
            })
    }
}

impl Schedule {
    pub fn new(cron: Cron, zone: TimeZone) -> Self {
        Self { cron, zone }
    }

    /// Parses `expression` and resolves `zone` in one go.
    pub fn parse(expression: &str, zone_name: Option<&str>) -> Result<Self, ScheduleError> {
        let cron = parse(expression).map_err(ScheduleError::Schedule)?;
        let zone = zone(zone_name).map_err(ScheduleError::TimeZone)?;
        Ok(Self::new(cron, zone))
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The instant a matching wall-clock time is due (see the module docs for DST).
    fn instant(&self, civil: DateTime) -> Option<Timestamp> {
        self.zone.to_ambiguous_timestamp(civil).compatible().ok()
    }

    /// The first due time strictly after `t`; `None` if none comes within nine years.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = self.zone.to_datetime(t).checked_sub(SHIFT).ok()?;
        let mut best: Option<(Timestamp, DateTime)> = None;
        let mut date = start.date();
        for _ in 0..SEARCH_DAYS {
            if let Some((_, found)) = best
                && date > found.date().checked_add(1.day()).ok()?
            {
                break;
            }
            if self.cron.day_matches(date) {
                for (h, m) in self.cron.times() {
                    let civil = date.at(h, m, 0, 0);
                    if civil < start {
                        continue;
                    }
                    if let Some((_, found)) = best
                        && civil > found.checked_add(SHIFT).ok()?
                    {
                        return best.map(|(at, _)| at);
                    }
                    let Some(at) = self.instant(civil) else {
                        continue;
                    };
                    if at > t && best.is_none_or(|(b, _)| at < b) {
                        best = Some((at, civil));
                    }
                }
            }
            date = date.checked_add(1.day()).ok()?;
        }
        best.map(|(at, _)| at)
    }

    /// The latest due time at or before `t`; `None` if none within nine years.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let start = self.zone.to_datetime(t).checked_add(SHIFT).ok()?;
        let mut best: Option<(Timestamp, DateTime)> = None;
        let mut date = start.date();
        for _ in 0..SEARCH_DAYS {
            if let Some((_, found)) = best
                && date < found.date().checked_sub(1.day()).ok()?
            {
                break;
            }
            if self.cron.day_matches(date) {
                for (h, m) in self.cron.times().rev() {
                    let civil = date.at(h, m, 0, 0);
                    if civil > start {
                        continue;
                    }
                    if let Some((_, found)) = best
                        && civil < found.checked_sub(SHIFT).ok()?
                    {
                        return best.map(|(at, _)| at);
                    }
                    let Some(at) = self.instant(civil) else {
                        continue;
                    };
                    if at <= t && best.is_none_or(|(b, _)| at > b) {
                        best = Some((at, civil));
                    }
                }
            }
            date = date.checked_sub(1.day()).ok()?;
        }
        best.map(|(at, _)| at)
    }

    /// How many due times fall in `(after, until]`, counting at most `cap + 1`.
    pub fn count_between(&self, after: Timestamp, until: Timestamp, cap: usize) -> usize {
        let mut count = 0;
        let mut t = after;
        while count <= cap {
            match self.next_after(t) {
                Some(next) if next <= until => {
                    count += 1;
                    t = next;
                }
                _ => break,
            }
        }
        count
    }
}

/// A schedule that cannot run, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("spec.schedule: {0}")]
    Schedule(CronError),
    #[error("spec.timeZone: {0}")]
    TimeZone(ZoneError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn schedule(expr: &str, zone: &str) -> Schedule {
        Schedule::parse(expr, Some(zone)).expect("valid schedule")
    }

    /// The next `n` due times after `from`, in UTC RFC 3339.
    fn next_n(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = at(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next_after(t).expect("a next time");
            out.push(t.to_string());
        }
        out
    }

    #[test]
    fn fields_values_ranges_steps_lists_and_names() {
        let c = parse("*/15 9-17 * JAN-mar,dec MON-FRI").expect("valid");
        assert_eq!(c.minutes, (1 << 0) | (1 << 15) | (1 << 30) | (1 << 45));
        assert_eq!(c.hours, (9..=17).fold(0, |b, h| b | (1 << h)));
        assert_eq!(c.months, (1 << 1) | (1 << 2) | (1 << 3) | (1 << 12));
        assert_eq!(c.days_of_week, (1..=5).fold(0, |b, d| b | (1 << d)));
        assert!(c.any_day_field_star);
        let c = parse("5/20 0 1,15 * 7").expect("valid");
        assert_eq!(c.minutes, (1 << 5) | (1 << 25) | (1 << 45));
        assert_eq!(c.days_of_week, 1, "7 is Sunday");
        assert!(!c.any_day_field_star);
        assert_eq!(parse("@daily"), parse("0 0 * * *"));
        assert_eq!(parse("@WEEKLY"), parse("0 0 * * 0"));
        assert_eq!(parse("@annually"), parse("0 0 1 1 *"));
        assert!(parse("0 0 ? * ?").is_ok());
    }

    #[test]
    fn malformed_expressions_say_which_field_and_why() {
        for (expr, needle) in [
            ("* * *", "expected 5 fields"),
            ("* * * * * *", "expected 5 fields"),
            ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day of month field"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day of week field"),
            ("5-3 * * * *", "runs backwards"),
            ("*/0 * * * *", "at least 1"),
            ("* * * FOO *", "neither a number nor one of JAN"),
            ("? * * * *", "only allowed in the day"),
            ("1,,2 * * * *", "empty list item"),
            ("@every 5m", "not a known macro"),
            ("a * * * *", "is not a number"),
        ] {
            let err = parse(expr).expect_err(expr).to_string();
            assert!(err.contains(needle), "{expr}: {err}");
        }
    }

    #[test]
    fn zones_resolve_from_the_bundled_database_and_unknown_ones_are_errors() {
        assert_eq!(zone(None).expect("utc"), TimeZone::UTC);
        assert!(bundled().get("Europe/Berlin").is_ok());
        assert!(zone(Some("America/New_York")).is_ok());
        for bad in ["Mars/Olympus_Mons", "Local", "", "/etc/passwd"] {
            assert!(zone(Some(bad)).is_err(), "{bad}");
        }
        let err = Schedule::parse("* * * * *", Some("Mars/Base"))
            .expect_err("unknown zone")
            .to_string();
        assert!(err.starts_with("spec.timeZone: \"Mars/Base\""), "{err}");
        let err = Schedule::parse("99 * * * *", None)
            .expect_err("bad")
            .to_string();
        assert!(err.starts_with("spec.schedule: minute field"), "{err}");
    }

    #[test]
    fn next_and_latest_in_utc() {
        let s = schedule("*/20 * * * *", "UTC");
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-01T00:20:00Z",
                "2026-01-01T00:40:00Z",
                "2026-01-01T01:00:00Z"
            ]
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-01-01T00:39:59Z")),
            Some(at("2026-01-01T00:20:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-01-01T00:40:00Z")),
            Some(at("2026-01-01T00:40:00Z"))
        );
        let monthly = schedule("@monthly", "UTC");
        assert_eq!(
            monthly.next_after(at("2026-01-31T12:00:00Z")),
            Some(at("2026-02-01T00:00:00Z"))
        );
        assert_eq!(
            s.count_between(at("2026-01-01T00:00:00Z"), at("2026-01-01T02:00:00Z"), 100),
            6
        );
        assert_eq!(
            s.count_between(at("2026-01-01T00:00:00Z"), at("2026-02-01T00:00:00Z"), 100),
            101,
            "counting stops past the cap"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 13th, or any Friday.
        let s = schedule("0 12 13 * 5", "UTC");
        assert_eq!(
            next_n(&s, "2026-03-01T00:00:00Z", 3),
            [
                "2026-03-06T12:00:00Z",
                "2026-03-13T12:00:00Z",
                "2026-03-20T12:00:00Z"
            ]
        );
        // Only Fridays the 13th would need both; with `*` in one field the other decides.
        let s = schedule("0 12 */10 * *", "UTC");
        assert_eq!(
            next_n(&s, "2026-03-01T13:00:00Z", 2),
            ["2026-03-11T12:00:00Z", "2026-03-21T12:00:00Z"]
        );
    }

    #[test]
    fn leap_days_and_dates_that_never_come() {
        let s = schedule("0 0 29 2 *", "UTC");
        assert_eq!(
            s.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2028-02-29T00:00:00Z"))
        );
        let never = schedule("0 0 30 2 *", "UTC");
        assert_eq!(never.next_after(at("2026-03-01T00:00:00Z")), None);
        assert_eq!(never.latest_at_or_before(at("2026-03-01T00:00:00Z")), None);
    }

    #[test]
    fn spring_forward_runs_a_skipped_time_once_right_after_the_gap() {
        // America/New_York: 2026-03-08 02:00 EST becomes 03:00 EDT.
        let s = schedule("30 2 * * *", "America/New_York");
        assert_eq!(
            next_n(&s, "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:30:00Z", // 02:30 does not exist: 03:30 EDT
                "2026-03-09T06:30:00Z"  // 02:30 EDT
            ]
        );
        // Every 30 minutes: 02:00 and 02:30 fall into the gap and land on 03:00 and 03:30,
        // which are due anyway: each instant once.
        let s = schedule("*/30 * * * *", "America/New_York");
        assert_eq!(
            next_n(&s, "2026-03-08T06:15:00Z", 4),
            [
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT
                "2026-03-08T07:30:00Z", // 03:30 EDT
                "2026-03-08T08:00:00Z"  // 04:00 EDT
            ]
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-03-08T07:10:00Z")),
            Some(at("2026-03-08T07:00:00Z"))
        );
    }

    #[test]
    fn fall_back_runs_a_repeated_time_once_at_its_first_occurrence() {
        // America/New_York: 2026-11-01 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
        let s = schedule("30 1 * * *", "America/New_York");
        assert_eq!(
            next_n(&s, "2026-10-31T00:00:00Z", 3),
            [
                "2026-10-31T05:30:00Z", // 01:30 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT, the first of two
                "2026-11-02T06:30:00Z"  // 01:30 EST
            ]
        );
        let hourly = schedule("0 * * * *", "America/New_York");
        assert_eq!(
            next_n(&hourly, "2026-11-01T04:30:00Z", 3),
            [
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T07:00:00Z", // 02:00 EST (01:00 EST is 01:00 again: not due twice)
                "2026-11-01T08:00:00Z"  // 03:00 EST
            ]
        );
        assert_eq!(
            hourly.latest_at_or_before(at("2026-11-01T06:59:00Z")),
            Some(at("2026-11-01T05:00:00Z"))
        );
        // Europe/Berlin changes at 03:00 CEST -> 02:00 CET on 2026-10-25.
        let berlin = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            next_n(&berlin, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
    }
}
