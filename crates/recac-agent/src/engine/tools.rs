//! The built-in engine's tools: list, read, search, write and edit files, run a command, and
//! finish. Every path stays inside the workspace; commands run with the workspace as their
//! directory and without the agent's credentials in their environment (except the allowed ones).

use std::ops::ControlFlow;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::process::{self, CommandSpec};
use crate::redact::Redactor;
use crate::secrets::ChildEnv;

/// Folders the listing and search skip.
const SKIP_DIRS: &[&str] = &[".git", "target", "node_modules", "__pycache__", ".venv"];
const MAX_LIST: usize = 500;
const MAX_MATCHES: usize = 200;

/// A tool's JSON schema, shared by both API shapes.
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: Value,
}

/// The tools offered to the model.
pub fn specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "list_files",
            description: "List files under a directory of the repository (recursive, relative paths).",
            parameters: json!({"type":"object","properties":{"path":{"type":"string","description":"Directory relative to the repository root; default the root."}}}),
        },
        ToolSpec {
            name: "read_file",
            description: "Read a text file of the repository, optionally a range of lines (1-based, inclusive).",
            parameters: json!({"type":"object","properties":{"path":{"type":"string"},"start_line":{"type":"integer"},"end_line":{"type":"integer"}},"required":["path"]}),
        },
        ToolSpec {
            name: "search",
            description: "Search the repository's files for a regular expression; returns path:line: text.",
            parameters: json!({"type":"object","properties":{"pattern":{"type":"string"},"path":{"type":"string","description":"Directory to search; default the root."}},"required":["pattern"]}),
        },
        ToolSpec {
            name: "write_file",
            description: "Create or overwrite a file with the given content (folders are created).",
            parameters: json!({"type":"object","properties":{"path":{"type":"string"},"content":{"type":"string"}},"required":["path","content"]}),
        },
        ToolSpec {
            name: "edit_file",
            description: "Replace one exact occurrence of old_text with new_text in a file.",
            parameters: json!({"type":"object","properties":{"path":{"type":"string"},"old_text":{"type":"string"},"new_text":{"type":"string"}},"required":["path","old_text","new_text"]}),
        },
        ToolSpec {
            name: "run_command",
            description: "Run a shell command in the repository root (sh -c). Returns the exit code and the (capped) output.",
            parameters: json!({"type":"object","properties":{"command":{"type":"string"},"timeout_secs":{"type":"integer"}},"required":["command"]}),
        },
        ToolSpec {
            name: "finish",
            description: "End the work. status `done` when the task is complete, `cannot_do` when it cannot be done; summary says what was changed (or why not).",
            parameters: json!({"type":"object","properties":{"status":{"type":"string","enum":["done","cannot_do"]},"summary":{"type":"string"}},"required":["summary"]}),
        },
    ]
}

/// What a tool call led to.
#[derive(Debug, PartialEq, Eq)]
pub enum ToolOutcome {
    /// Text handed back to the model.
    Output(String),
    /// The model called `finish`.
    Finish { done: bool, summary: String },
}

/// Runs tools inside one workspace.
pub struct Toolbox {
    root: PathBuf,
    command_timeout: Duration,
    output_limit: usize,
    redactor: Redactor,
    child_env: ChildEnv,
}

impl Toolbox {
    pub fn new(
        root: &Path,
        command_timeout: Duration,
        output_limit: usize,
        redactor: Redactor,
        child_env: ChildEnv,
    ) -> std::io::Result<Self> {
        Ok(Self {
            root: root.canonicalize()?,
            command_timeout,
            output_limit,
            redactor,
            child_env,
        })
    }

    /// Runs one tool call. Errors become text for the model, never a failure of the run.
    pub async fn call(&self, name: &str, args: &Value) -> ToolOutcome {
        let result = match name {
            "list_files" => self.list(args),
            "read_file" => self.read(args),
            "search" => self.search(args),
            "write_file" => self.write(args),
            "edit_file" => self.edit(args),
            "run_command" => self.run(args).await,
            "finish" => {
                let summary = str_arg(args, "summary").unwrap_or("").to_string();
                let done = str_arg(args, "status") != Some("cannot_do");
                return ToolOutcome::Finish {
                    done,
                    summary: self.redactor.redact(&summary),
                };
            }
            other => Err(format!("unknown tool `{other}`")),
        };
        let text = match result {
            Ok(text) => text,
            Err(err) => format!("error: {err}"),
        };
        ToolOutcome::Output(process::cap(
            &self.redactor.redact(&text),
            self.output_limit,
        ))
    }

    /// `rel` resolved inside the workspace, or an error when it would leave it or touch `.git`.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, String> {
        let rel_path = Path::new(rel);
        let mut clean = PathBuf::new();
        for comp in rel_path.components() {
            match comp {
                Component::CurDir => {}
                Component::Normal(part) => clean.push(part),
                Component::ParentDir => {
                    if !clean.pop() {
                        return Err(format!("`{rel}` is outside the repository"));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!(
                        "`{rel}` is absolute: use a path relative to the repository root"
                    ));
                }
            }
        }
        if clean
            .components()
            .next()
            .is_some_and(|c| c.as_os_str() == ".git")
        {
            return Err("the .git folder is off limits".into());
        }
        let full = self.root.join(&clean);
        // Symlinks must not lead outside: check the deepest existing ancestor's real path.
        let mut probe = full.clone();
        loop {
            if let Ok(real) = probe.canonicalize() {
                if !real.starts_with(&self.root) {
                    return Err(format!("`{rel}` leads outside the repository"));
                }
                break;
            }
            if !probe.pop() {
                break;
            }
        }
        Ok(full)
    }

    fn list(&self, args: &Value) -> Result<String, String> {
        let base = self.resolve(str_arg(args, "path").unwrap_or("."))?;
        let mut out = Vec::new();
        let mut stopped = false;
        walk_files(&base, |path| {
            out.push(self.relative(path));
            stopped = out.len() >= MAX_LIST;
            if stopped {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        out.sort();
        if stopped {
            out.push(format!("[listing stopped at {MAX_LIST} files]"));
        }
        Ok(if out.is_empty() {
            "(no files)".into()
        } else {
            out.join("\n")
        })
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    fn read(&self, args: &Value) -> Result<String, String> {
        let path = self.resolve(required(args, "path")?)?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read: {e}"))?;
        let start = args
            .get("start_line")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1) as usize;
        let end = args
            .get("end_line")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        if start == 1 && end.is_none() {
            return Ok(text);
        }
        Ok(text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i + 1 >= start && end.is_none_or(|e| *i < e))
            .map(|(i, l)| format!("{}: {l}", i + 1))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    fn search(&self, args: &Value) -> Result<String, String> {
        let re = regex::Regex::new(required(args, "pattern")?)
            .map_err(|e| format!("bad pattern: {e}"))?;
        let base = self.resolve(str_arg(args, "path").unwrap_or("."))?;
        let mut hits = Vec::new();
        walk_files(&base, |path| {
            let Ok(text) = std::fs::read_to_string(path) else {
                return ControlFlow::Continue(());
            };
            for (i, line) in text.lines().enumerate() {
                if re.is_match(line) {
                    hits.push(format!(
                        "{}:{}: {}",
                        self.relative(path),
                        i + 1,
                        process::cap(line, 300)
                    ));
                    if hits.len() >= MAX_MATCHES {
                        hits.push(format!("[stopped at {MAX_MATCHES} matches]"));
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        });
        Ok(if hits.is_empty() {
            "no matches".into()
        } else {
            hits.join("\n")
        })
    }

    fn write(&self, args: &Value) -> Result<String, String> {
        let rel = required(args, "path")?;
        let path = self.resolve(rel)?;
        let content = required(args, "content")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create folders: {e}"))?;
        }
        std::fs::write(&path, content).map_err(|e| format!("cannot write: {e}"))?;
        Ok(format!("wrote {} bytes to {rel}", content.len()))
    }

    fn edit(&self, args: &Value) -> Result<String, String> {
        let rel = required(args, "path")?;
        let path = self.resolve(rel)?;
        let old = required(args, "old_text")?;
        let new = required(args, "new_text")?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read: {e}"))?;
        match text.matches(old).count() {
            0 => Err("old_text not found".into()),
            1 => {
                std::fs::write(&path, text.replacen(old, new, 1))
                    .map_err(|e| format!("cannot write: {e}"))?;
                Ok(format!("edited {rel}"))
            }
            n => Err(format!("old_text occurs {n} times; give more context")),
        }
    }

    async fn run(&self, args: &Value) -> Result<String, String> {
        let command = required(args, "command")?;
        let timeout = args
            .get("timeout_secs")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .map_or(self.command_timeout, |t| t.min(self.command_timeout));
        // The model's command line goes to sh as one argument; the agent never builds command
        // lines from ticket text itself.
        let mut spec = CommandSpec::new("sh", &["-c", command], &self.root, timeout);
        self.child_env.apply(&mut spec);
        let out = process::run(&spec)
            .await
            .map_err(|e| format!("cannot run: {e}"))?;
        Ok(out.describe(self.output_limit))
    }
}

fn str_arg<'a>(args: &'a Value, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

fn required<'a>(args: &'a Value, key: &str) -> Result<&'a str, String> {
    str_arg(args, key).ok_or_else(|| format!("missing string argument `{key}`"))
}

/// Visits every file under `base` (or `base` itself when it is a file) in name order,
/// skipping build and VCS folders, until `visit` breaks.
fn walk_files(base: &Path, mut visit: impl FnMut(&Path) -> ControlFlow<()>) {
    if base.is_file() {
        let _ = visit(base);
        return;
    }
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for entry in entries {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !SKIP_DIRS.contains(&name.as_str()) {
                    subdirs.push(entry.path());
                }
            } else if visit(&entry.path()).is_break() {
                return;
            }
        }
        // Depth first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toolbox(dir: &Path) -> Toolbox {
        Toolbox::new(
            dir,
            Duration::from_secs(10),
            4000,
            Redactor::new(["sekrit-value"]),
            ChildEnv::new(
                ["PASSED_SECRET", "KEPT_SECRET"],
                crate::secrets::parse_allow("PASSED_SECRET").unwrap(),
                |n| Some(format!("{n}-value")),
            ),
        )
        .unwrap()
    }

    fn text(o: ToolOutcome) -> String {
        match o {
            ToolOutcome::Output(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn file_tools_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let tb = toolbox(dir.path());
        assert!(
            text(
                tb.call(
                    "write_file",
                    &json!({"path":"src/a.txt","content":"one\ntwo sekrit-value\n"})
                )
                .await
            )
            .starts_with("wrote")
        );
        assert_eq!(
            text(tb.call("read_file", &json!({"path":"src/a.txt"})).await),
            "one\ntwo [REDACTED]\n"
        );
        assert_eq!(
            text(
                tb.call("read_file", &json!({"path":"src/a.txt","start_line":2}))
                    .await
            ),
            "2: two [REDACTED]"
        );
        assert_eq!(text(tb.call("list_files", &json!({})).await), "src/a.txt");
        assert_eq!(
            text(tb.call("search", &json!({"pattern":"^tw"})).await),
            "src/a.txt:2: two [REDACTED]"
        );
        assert_eq!(
            text(
                tb.call(
                    "edit_file",
                    &json!({"path":"src/a.txt","old_text":"one","new_text":"uno"})
                )
                .await
            ),
            "edited src/a.txt"
        );
        for bad in ["../x", "/etc/passwd", "src/../../x", ".git/config"] {
            let out = text(
                tb.call("write_file", &json!({"path":bad,"content":"x"}))
                    .await,
            );
            assert!(out.starts_with("error:"), "{bad}: {out}");
        }
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        assert!(
            text(tb.call("read_file", &json!({"path":"link/hostname"})).await)
                .starts_with("error:")
        );
        assert!(text(tb.call("nope", &json!({})).await).contains("unknown tool"));
        assert!(text(tb.call("read_file", &json!({})).await).contains("missing string argument"));
    }

    #[tokio::test]
    async fn commands_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let tb = toolbox(dir.path());
        let out = text(
            tb.call(
                "run_command",
                &json!({"command":"pwd; echo sekrit-value; echo \"[$PASSED_SECRET][$KEPT_SECRET]\"; exit 4"}),
            )
            .await,
        );
        assert!(out.starts_with("exit code 4"), "{out}");
        assert!(out.contains(dir.path().canonicalize().unwrap().to_str().unwrap()));
        assert!(!out.contains("sekrit-value"));
        assert!(out.contains("[PASSED_SECRET-value][]"), "{out}");
        assert_eq!(
            tb.call("finish", &json!({"status":"cannot_do","summary":"no"}))
                .await,
            ToolOutcome::Finish {
                done: false,
                summary: "no".into()
            }
        );
    }
}
