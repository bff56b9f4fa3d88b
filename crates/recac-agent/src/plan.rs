//! Planning runs (`RECAC_MODE=plan`): the prompt that asks the engine for a plan instead of the
//! work, and the plan's cut to what the result may carry. Pure.

use recac_api::agent_contract::MAX_PLAN_BYTES;
pub use recac_api::agent_contract::PLANNING_MARKER;

/// About how long the plan may be, in characters (under [`MAX_PLAN_BYTES`], which the result
/// enforces).
pub const PLAN_CHARS: usize = 2500;

/// The built-in engine's system prompt in a planning run.
pub const SYSTEM_PROMPT: &str = "You are recac, an autonomous software engineer planning a change in a checkout of a git repository. \
Use the tools to read the code (list_files, read_file, search, and run_command only for commands that change nothing). \
All paths are relative to the repository root. Change no file: write, edit, move and delete nothing. Nothing you do is committed or pushed. \
When the plan is ready call finish with status `done` and the plan as the summary; \
if the task cannot be done call finish with status `cannot_do` and explain why.";

/// The prompt of a planning run: `task` (the work's prompt) wrapped in what to do instead of
/// the work.
pub fn planning_prompt(task: &str) -> String {
    format!(
        "{PLANNING_MARKER} Write a plan for the task below; do not carry it out.

1. Read the repository: list, read and search its files. Run only commands that change nothing.
2. Change no files: write, edit, move and delete nothing. Nothing of this run is committed or pushed; a later run does the work from the plan once it is approved.
3. Write the plan in plain text, under about {PLAN_CHARS} characters, in three parts:
   - Files to change: each file to change or add, and what changes in it.
   - Approach: the steps of the change, in order, and why this way.
   - Test plan: the tests to add or change, and the commands that run them.
4. Finish with the plan as the summary: call `finish` with status `done` and the plan as its summary (without that tool, end your output with the plan). If the task cannot be done, finish with status `cannot_do` (or exit with code 3) and say why.

The task:

{}
",
        task.trim()
    )
}

/// `plan` cut to at most `max` bytes on a character boundary, ending with a note saying so;
/// unchanged when it fits.
pub fn cut_plan(plan: &str, max: usize) -> String {
    if plan.len() <= max {
        return plan.to_string();
    }
    let note = format!("… (plan cut at {max} bytes)");
    let kept = prefix_within(plan, max.saturating_sub(note.len())).trim_end();
    let cut = format!("{kept}{note}");
    prefix_within(&cut, max).to_string()
}

/// The engine's summary as the plan the result carries: trimmed and cut to [`MAX_PLAN_BYTES`]
/// (`summary` is already redacted). `None` when it is empty.
pub fn plan_from_summary(summary: &str) -> Option<String> {
    let plan = summary.trim();
    (!plan.is_empty()).then(|| cut_plan(plan, MAX_PLAN_BYTES))
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn prefix_within(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_planning_prompt_wraps_the_task() {
        let task = "Jira ticket DEMO-1: Greet Ada\n\nFile: greetings/ada.txt\nLine: Hello, Ada!\n";
        let prompt = planning_prompt(task);
        assert!(prompt.starts_with(PLANNING_MARKER), "{prompt}");
        assert!(prompt.contains(task.trim()));
        for part in [
            "Change no files",
            "Files to change",
            "Approach",
            "Test plan",
            "2500 characters",
            "plan as its summary",
        ] {
            assert!(prompt.contains(part), "{part}: {prompt}");
        }
        // The instructions add no `File:` or `Line:` line of their own: the task's are the
        // only ones.
        let own: Vec<&str> = prompt
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("File:") || l.starts_with("Line:"))
            .collect();
        assert_eq!(own, ["File: greetings/ada.txt", "Line: Hello, Ada!"]);
        assert_eq!(prompt.matches(PLANNING_MARKER).count(), 1);
    }

    #[test]
    fn short_plans_are_kept_whole() {
        assert_eq!(cut_plan("a plan", 100), "a plan");
        let exact = "x".repeat(MAX_PLAN_BYTES);
        assert_eq!(cut_plan(&exact, MAX_PLAN_BYTES), exact);
        assert_eq!(plan_from_summary("  \n a plan \n"), Some("a plan".into()));
        assert_eq!(plan_from_summary(" \n\t "), None);
    }

    #[test]
    fn long_plans_are_cut_on_a_character_boundary_with_a_note() {
        let note = "… (plan cut at 3000 bytes)";
        for unit in ["x", "é", "漢", "🦀", "ab \n"] {
            let plan = unit.repeat(4000);
            let cut = cut_plan(&plan, MAX_PLAN_BYTES);
            assert!(cut.len() <= MAX_PLAN_BYTES, "{unit}: {}", cut.len());
            assert!(cut.ends_with(note), "{unit}");
            let kept = cut.strip_suffix(note).unwrap();
            assert!(plan.starts_with(kept), "{unit}");
            // No more than one character (and trailing spaces) short of the limit.
            assert!(
                kept.len() + note.len() + unit.len() > MAX_PLAN_BYTES,
                "{unit}: {}",
                cut.len()
            );
            assert_eq!(plan_from_summary(&plan), Some(cut));
        }
        // Too small for the note: still within the limit.
        assert!(cut_plan(&"x".repeat(50), 10).len() <= 10);
        assert_eq!(cut_plan("abc", 0), "");
    }
}
