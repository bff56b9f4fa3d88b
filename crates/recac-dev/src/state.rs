//! The state folder of one `recac dev` run: the control plane's data, logs, the git
//! repositories, the effective configuration. It names its owner (`owner`: the process
//! id), so a second run cannot use it at the same time and a folder left by a run that
//! was killed is recognised and cleaned.

use std::path::{Path, PathBuf};

use crate::DevError;

const OWNER_FILE: &str = "owner";
const KEPT_FILE: &str = "kept";

/// The default folder: `$XDG_STATE_HOME/recac/dev`, else `$HOME/.local/state/recac/dev`.
pub fn default_path() -> PathBuf {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("recac").join("dev");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home)
        .join(".local")
        .join("state")
        .join("recac")
        .join("dev")
}

/// Whether `pid` is a live process whose command line is `recac dev` (by any path).
fn is_live_dev_process(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.iter().any(|a| a == "dev") && args.iter().any(|a| a.contains("recac"))
}

/// A claimed state folder; removed when dropped unless kept.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    keep: bool,
}

impl StateDir {
    /// Claims `path` for this process. A folder left by a run that is gone is removed
    /// first (said in the returned notice); a folder in use, kept on purpose, or not made
    /// by `recac dev` is an error saying what to do.
    pub fn claim(path: &Path, keep: bool) -> Result<(Self, Option<String>), DevError> {
        let io = |source| DevError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut notice = None;
        if path.exists() {
            let owner = std::fs::read_to_string(path.join(OWNER_FILE)).ok();
            let pid = owner.as_deref().and_then(|o| o.trim().parse::<u32>().ok());
            let is_empty = std::fs::read_dir(path).map_err(io)?.next().is_none();
            if let Some(pid) = pid.filter(|p| *p != std::process::id() && is_live_dev_process(*p)) {
                return Err(DevError::StateInUse {
                    path: path.display().to_string(),
                    pid,
                });
            }
            if path.join(KEPT_FILE).exists() {
                return Err(DevError::StateKept {
                    path: path.display().to_string(),
                });
            }
            match pid {
                Some(pid) => {
                    std::fs::remove_dir_all(path).map_err(io)?;
                    notice = Some(format!(
                        "removed the state folder {} of an earlier `recac dev` (pid {pid}) that did not stop cleanly",
                        path.display()
                    ));
                }
                None if is_empty => {}
                None => {
                    return Err(DevError::StateNotOurs {
                        path: path.display().to_string(),
                    });
                }
            }
        }
        std::fs::create_dir_all(path).map_err(io)?;
        std::fs::write(path.join(OWNER_FILE), format!("{}\n", std::process::id())).map_err(io)?;
        let path = std::fs::canonicalize(path).map_err(io)?;
        Ok((Self { path, keep }, notice))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether the folder stays after the run.
    pub fn kept(&self) -> bool {
        self.keep
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.keep {
            let _ = std::fs::remove_file(self.path.join(OWNER_FILE));
            let _ = std::fs::write(
                self.path.join(KEPT_FILE),
                "kept by `recac dev --keep`; remove this folder before the next run\n",
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_left_by_a_dead_run_is_cleaned_with_a_notice() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state");
        std::fs::create_dir_all(path.join("control-plane")).expect("stale content");
        // No live process has this id: pid_max is at most 2^22.
        std::fs::write(path.join(OWNER_FILE), "4194999\n").expect("owner");
        let (state, notice) = StateDir::claim(&path, false).expect("claimed");
        assert!(notice.expect("a notice").contains("did not stop cleanly"));
        assert!(!path.join("control-plane").exists());
        drop(state);
        assert!(!path.exists(), "removed at the end of the run");
    }

    #[test]
    fn kept_and_foreign_folders_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state");
        let (state, _) = StateDir::claim(&path, true).expect("claimed");
        drop(state);
        let err = StateDir::claim(&path, false).expect_err("kept");
        assert!(err.to_string().contains("--keep"), "{err}");
        assert!(path.join(KEPT_FILE).exists());

        let foreign = dir.path().join("photos");
        std::fs::create_dir_all(&foreign).expect("folder");
        std::fs::write(foreign.join("cat.jpg"), "meow").expect("file");
        let err = StateDir::claim(&foreign, false).expect_err("not ours");
        assert!(
            err.to_string().contains("not a `recac dev` state folder"),
            "{err}"
        );
        assert!(foreign.join("cat.jpg").exists());
    }
}
