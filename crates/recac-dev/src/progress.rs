//! Live progress: one line per ticket (ticket, Jira status, task, phase, attempt, Job,
//! branch, comment posted), redrawn in place on a terminal and printed as plain lines
//! (only when a ticket's line changes) otherwise.

use std::collections::BTreeMap;
use std::io::Write;

/// Labels the source sets on a ticket it skips with a comment.
pub const SKIP_LABELS: [(&str, &str); 2] = [
    ("recac-needs-repository", "needs repository"),
    ("recac-not-allowed", "not allowed"),
];

/// A ticket as the simulator holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketView {
    pub key: String,
    pub status: String,
    pub labels: Vec<String>,
    /// Comments on the ticket.
    pub comments: usize,
}

/// An AgentTask as its status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskView {
    pub name: String,
    pub ticket: String,
    pub phase: String,
    pub attempt: Option<i32>,
    pub job: Option<String>,
    pub branch: Option<String>,
    /// `status.feedback.reported`: `<kind>/<attempt>` of every comment delivered.
    pub reported: Vec<String>,
}

/// One ticket's line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub ticket: String,
    pub jira_status: String,
    pub task: String,
    pub phase: String,
    pub attempt: String,
    pub job: String,
    pub branch: String,
    pub comment: String,
    /// The ticket reached its end: a final phase with its comment, or a skip comment.
    pub finished: bool,
}

const FINAL_KINDS: [&str; 3] = ["succeeded/", "failed/", "cancelled/"];

fn dash(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_string()
}

/// The lines for `tickets` (in their order) and for tasks of tickets not among them
/// (sorted by ticket), one per ticket; a ticket with several tasks shows its last.
pub fn rows(tickets: &[TicketView], tasks: &[TaskView]) -> Vec<Row> {
    let mut by_ticket: BTreeMap<&str, &TaskView> = BTreeMap::new();
    for task in tasks {
        by_ticket.insert(task.ticket.as_str(), task);
    }
    let mut rows: Vec<Row> = tickets
        .iter()
        .map(|ticket| {
            row(
                &ticket.key,
                Some(ticket),
                by_ticket.get(ticket.key.as_str()).copied(),
            )
        })
        .collect();
    for (key, task) in &by_ticket {
        if !tickets.iter().any(|t| t.key == *key) {
            rows.push(row(key, None, Some(task)));
        }
    }
    rows
}

fn row(key: &str, ticket: Option<&TicketView>, task: Option<&TaskView>) -> Row {
    let skipped = ticket.and_then(|t| {
        SKIP_LABELS
            .iter()
            .find(|(label, _)| t.labels.iter().any(|l| l == label))
            .filter(|_| t.comments > 0)
            .map(|(_, words)| *words)
    });
    let mut row = Row {
        ticket: key.to_string(),
        jira_status: dash(ticket.map(|t| t.status.as_str())),
        task: "-".into(),
        phase: "-".into(),
        attempt: "-".into(),
        job: "-".into(),
        branch: "-".into(),
        comment: "-".into(),
        finished: false,
    };
    match task {
        Some(task) => {
            let final_report = task
                .reported
                .iter()
                .find(|r| FINAL_KINDS.iter().any(|k| r.starts_with(k)));
            row.task = task.name.clone();
            row.phase = dash(Some(&task.phase));
            row.attempt = task.attempt.map_or("-".into(), |a| a.to_string());
            row.job = dash(task.job.as_deref());
            row.branch = dash(task.branch.as_deref());
            row.comment = dash(final_report.or(task.reported.last()).map(String::as_str));
            row.finished =
                matches!(task.phase.as_str(), "Succeeded" | "Failed") && final_report.is_some();
        }
        None => {
            if let Some(words) = skipped {
                row.comment = words.to_string();
                row.finished = true;
            }
        }
    }
    row
}

const HEADER: [&str; 8] = [
    "TICKET", "JIRA", "TASK", "PHASE", "ATTEMPT", "JOB", "BRANCH", "COMMENT",
];

fn cells(row: &Row) -> [&str; 8] {
    [
        &row.ticket,
        &row.jira_status,
        &row.task,
        &row.phase,
        &row.attempt,
        &row.job,
        &row.branch,
        &row.comment,
    ]
}

/// The table: a header and one aligned line per row.
pub fn table(rows: &[Row]) -> Vec<String> {
    let mut widths = HEADER.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(cells(row)) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |values: [&str; 8]| {
        values
            .iter()
            .zip(widths)
            .map(|(value, width)| format!("{value:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    std::iter::once(line(HEADER))
        .chain(rows.iter().map(|r| line(cells(r))))
        .collect()
}

/// One plain line describing a row, for output that is not a terminal.
pub fn plain_line(row: &Row) -> String {
    format!(
        "{}: jira {}, task {}, phase {}, attempt {}, job {}, branch {}, comment {}",
        row.ticket,
        row.jira_status,
        row.task,
        row.phase,
        row.attempt,
        row.job,
        row.branch,
        row.comment
    )
}

/// Prints rows as they change.
pub struct Printer {
    tty: bool,
    drawn: usize,
    last: Vec<Row>,
}

impl Printer {
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            drawn: 0,
            last: Vec::new(),
        }
    }

    /// Shows `rows`: on a terminal, redraws the table in place; otherwise prints one line
    /// per ticket whose line changed.
    pub fn show(&mut self, out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
        if rows == self.last.as_slice() {
            return Ok(());
        }
        if self.tty {
            if self.drawn > 0 {
                // Up to the table's first line, then clear to the end of the screen.
                write!(out, "\x1b[{}A\x1b[J", self.drawn)?;
            }
            let lines = table(rows);
            for line in &lines {
                writeln!(out, "{line}")?;
            }
            self.drawn = lines.len();
        } else {
            for row in rows {
                if !self.last.contains(row) {
                    writeln!(out, "{}", plain_line(row))?;
                }
            }
        }
        out.flush()?;
        self.last = rows.to_vec();
        Ok(())
    }

    /// Forgets the drawn table, so output printed after it is not overwritten.
    pub fn release(&mut self) {
        self.drawn = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(key: &str, status: &str, labels: &[&str], comments: usize) -> TicketView {
        TicketView {
            key: key.into(),
            status: status.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            comments,
        }
    }

    fn task(ticket: &str, phase: &str, reported: &[&str]) -> TaskView {
        TaskView {
            name: format!("{}-r1", ticket.to_lowercase()),
            ticket: ticket.into(),
            phase: phase.into(),
            attempt: Some(2),
            job: Some("job".into()),
            branch: Some(format!("recac/{ticket}")),
            reported: reported.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn a_row_per_ticket_and_when_each_is_finished() {
        let tickets = [
            ticket("DEMO-1", "In Review", &["recac"], 2),
            ticket("DEMO-2", "In Progress", &["recac"], 1),
            ticket("DEMO-3", "To Do", &["recac", "recac-needs-repository"], 1),
            ticket("DEMO-4", "To Do", &["recac"], 0),
        ];
        let tasks = [
            task("DEMO-1", "Succeeded", &["pickedUp/1", "succeeded/2"]),
            task("DEMO-2", "Succeeded", &["pickedUp/1"]),
            task("OTHER-9", "Running", &[]),
        ];
        let rows = rows(&tickets, &tasks);
        let summary: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|r| (r.ticket.as_str(), r.comment.as_str(), r.finished))
            .collect();
        assert_eq!(
            summary,
            [
                ("DEMO-1", "succeeded/2", true),
                ("DEMO-2", "pickedUp/1", false),
                ("DEMO-3", "needs repository", true),
                ("DEMO-4", "-", false),
                ("OTHER-9", "-", false),
            ]
        );
        assert_eq!(rows[4].jira_status, "-");
    }

    #[test]
    fn plain_output_prints_only_changed_lines() {
        let mut printer = Printer::new(false);
        let mut out = Vec::new();
        let first = rows(&[ticket("DEMO-1", "To Do", &[], 0)], &[]);
        printer.show(&mut out, &first).expect("printed");
        printer.show(&mut out, &first).expect("printed");
        let second = rows(&[ticket("DEMO-1", "In Progress", &[], 0)], &[]);
        printer.show(&mut out, &second).expect("printed");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn a_terminal_gets_the_table_redrawn_in_place() {
        let mut printer = Printer::new(true);
        let mut out = Vec::new();
        printer
            .show(&mut out, &rows(&[ticket("DEMO-1", "To Do", &[], 0)], &[]))
            .expect("printed");
        printer
            .show(&mut out, &rows(&[ticket("DEMO-1", "Done", &[], 0)], &[]))
            .expect("printed");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("\x1b[2A\x1b[J"), "{text:?}");
        assert!(text.starts_with("TICKET"));
    }
}
