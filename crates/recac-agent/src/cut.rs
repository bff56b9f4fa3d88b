//! When the work must end before the Job's deadline, and what a run cut short says it did and
//! left (pure).

use std::time::{Duration, SystemTime};

/// How long the work may still go on at `now`: until `deadline` less `margin` (zero when that
/// has passed).
pub fn time_left(deadline: SystemTime, margin: Duration, now: SystemTime) -> Duration {
    deadline
        .checked_sub(margin)
        .and_then(|end| end.duration_since(now).ok())
        .unwrap_or(Duration::ZERO)
}

/// Whole seconds from `now` to `deadline` (zero when it has passed).
pub fn seconds_before(deadline: SystemTime, now: SystemTime) -> u64 {
    deadline
        .duration_since(now)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Most file names [`done`] lists.
const MAX_NAMED_FILES: usize = 10;

/// What a run cut short did: the files its commit changed, or that it committed nothing.
pub fn done(files: &[String], commit: Option<&str>) -> String {
    let Some(commit) = commit.filter(|_| !files.is_empty()) else {
        return "nothing was committed".to_string();
    };
    let short: String = commit.chars().take(7).collect();
    let mut names = files
        .iter()
        .take(MAX_NAMED_FILES)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > MAX_NAMED_FILES {
        names.push_str(&format!(" and {} more", files.len() - MAX_NAMED_FILES));
    }
    let noun = if files.len() == 1 { "file" } else { "files" };
    format!("changed {} {noun}: {names} (commit {short})", files.len())
}

/// What is left after the deadline cut the work `seconds` before it.
pub fn left_at_deadline(seconds: u64) -> String {
    format!(
        "the rest of the task: the work stopped {seconds} s before the deadline and its tests did not run; a retry or a follow-up continues from the branch"
    )
}

/// What is left after the deadline cut the tests `seconds` before it (the work itself ended).
pub fn left_tests_at_deadline(seconds: u64) -> String {
    format!(
        "the tests: they were stopped {seconds} s before the deadline, after the work ended; a retry continues from the branch and runs them"
    )
}

/// What is left after the budget ran out (`why` says which limit).
pub fn left_at_budget(why: &str) -> String {
    format!(
        "the rest of the task: {why}; the tests did not run; a follow-up with more budget continues from the branch"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_ends_a_margin_before_the_deadline() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let deadline = now + Duration::from_secs(100);
        assert_eq!(
            time_left(deadline, Duration::from_secs(30), now),
            Duration::from_secs(70)
        );
        assert_eq!(
            time_left(deadline, Duration::from_secs(100), now),
            Duration::ZERO
        );
        // A deadline in the past: the work ends at once.
        assert_eq!(
            time_left(now - Duration::from_secs(5), Duration::ZERO, now),
            Duration::ZERO
        );
        assert_eq!(
            time_left(deadline, Duration::from_secs(u64::MAX / 2), now),
            Duration::ZERO
        );
        assert_eq!(seconds_before(deadline, now), 100);
        assert_eq!(seconds_before(now, deadline), 0);
    }

    #[test]
    fn what_was_done_names_the_files() {
        let files: Vec<String> = ["a.rs", "b.rs", "c.rs"].map(String::from).to_vec();
        assert_eq!(
            done(&files, Some("abc1234def")),
            "changed 3 files: a.rs, b.rs, c.rs (commit abc1234)"
        );
        assert_eq!(
            done(&files[..1], Some("abc1234def")),
            "changed 1 file: a.rs (commit abc1234)"
        );
        assert_eq!(done(&[], Some("abc")), "nothing was committed");
        assert_eq!(done(&files, None), "nothing was committed");
        let many: Vec<String> = (0..13).map(|i| format!("f{i}")).collect();
        let text = done(&many, Some("0123456789"));
        assert!(
            text.starts_with("changed 13 files: f0, f1") && text.contains("f9 and 3 more"),
            "{text}"
        );
    }

    #[test]
    fn what_is_left_says_why() {
        let text = left_at_deadline(60);
        assert!(
            text.starts_with("the rest of the task")
                && text.contains("60 s before the deadline")
                && text.contains("continues from the branch"),
            "{text}"
        );
        assert!(left_tests_at_deadline(5).starts_with("the tests"));
        assert!(left_at_budget("the token budget (10) is spent").contains("token budget"));
    }
}
