//! The agent's own filesystem failures (its workspace folder, temporary folders, the result
//! file), classified from what failed: a read-only filesystem, a permission, a full disk or
//! a path through a file is the environment's doing, which another attempt would meet again;
//! the message names the operation, the path, the setting that chose it and how to fix it.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A failed filesystem operation of the agent itself.
#[derive(Debug)]
pub struct FsError {
    /// What the agent was doing: "create the workspace folder".
    pub op: String,
    pub path: PathBuf,
    /// The variable that chose the path (`RECAC_WORKSPACE`, `TMPDIR`, `RECAC_RESULT_PATH`).
    pub setting: Option<&'static str>,
    pub error: std::io::Error,
}

impl FsError {
    pub fn new(
        op: impl Into<String>,
        path: impl Into<PathBuf>,
        setting: Option<&'static str>,
        error: std::io::Error,
    ) -> Self {
        Self {
            op: op.into(),
            path: path.into(),
            setting,
            error,
        }
    }

    /// Whether the environment refuses it (another attempt would fail the same way).
    pub fn is_environment(&self) -> bool {
        environment_cause(&self.error).is_some()
    }
}

/// What an I/O error says about the environment, when it is the environment's doing.
pub fn environment_cause(error: &std::io::Error) -> Option<String> {
    Some(match error.kind() {
        ErrorKind::ReadOnlyFilesystem => "the filesystem is read-only".into(),
        ErrorKind::PermissionDenied => match own_uid() {
            Some(uid) => format!("the agent's user (uid {uid}) lacks the permission"),
            None => "the agent's user lacks the permission".into(),
        },
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => "the filesystem is full".into(),
        ErrorKind::NotADirectory => "a part of the path is a file, not a folder".into(),
        ErrorKind::NotFound => "a folder on the path does not exist".into(),
        ErrorKind::IsADirectory => "the path is a folder".into(),
        ErrorKind::InvalidFilename => "the path is too long or not a valid name".into(),
        ErrorKind::FileTooLarge => "the file is too large for the filesystem".into(),
        _ => return None,
    })
}

/// The user this process runs as. (Not from the owner of `/proc/self`: a non-dumpable
/// process's `/proc` entries belong to root, see [`crate::broker::make_undumpable`].)
fn own_uid() -> Option<u32> {
    Some(rustix::process::getuid().as_raw())
}

/// How to fix a path chosen by `setting`.
fn fix(setting: Option<&str>) -> &'static str {
    match setting {
        Some("RECAC_WORKSPACE") => {
            "point RECAC_WORKSPACE at an empty or absent folder the agent can write: in a pod, a folder in the workspace emptyDir (the operator sets /workspace/repo); with readOnlyRootFilesystem only the emptyDirs at /workspace and /tmp are writable, so a custom image or pod spec must keep the agent's folders there"
        }
        Some("TMPDIR") => {
            "point TMPDIR at a folder the agent can write: in a pod, the scratch emptyDir at /tmp (the operator sets TMPDIR=/tmp; with readOnlyRootFilesystem the rest of the root filesystem is read-only)"
        }
        Some("RECAC_RESULT_PATH") => {
            "point RECAC_RESULT_PATH at a file the agent can write (in a pod the operator sets /dev/termination-log)"
        }
        _ => {
            "the agent writes only to its workspace and temporary folders: in a pod, the emptyDirs at /workspace and /tmp"
        }
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chosen = match self.setting {
            Some(setting) => format!(" ({setting})"),
            None => String::new(),
        };
        write!(
            f,
            "cannot {} {}{chosen}: {}",
            self.op,
            self.path.display(),
            self.error
        )?;
        if let Some(cause) = environment_cause(&self.error) {
            write!(
                f,
                ": {cause} (not retried: another attempt would meet it again). Fix: {}",
                fix(self.setting)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The folder temporary files go to, and the variable that chose it.
pub fn temp_dir() -> (PathBuf, Option<&'static str>) {
    let setting = std::env::var_os("TMPDIR")
        .filter(|v| !v.is_empty())
        .map(|_| "TMPDIR");
    (std::env::temp_dir(), setting)
}

/// Checks that a temporary folder can be made (and removes it): what the agent needs for the
/// git certificate bundle and the external engine's prompt file.
pub fn check_temp_dir() -> Result<(), FsError> {
    let (dir, setting) = temp_dir();
    tempfile::Builder::new()
        .prefix("recac-check-")
        .tempdir_in(&dir)
        .map(drop)
        .map_err(|e| FsError::new("create a temporary folder in", &dir, setting, e))
}

/// Checks that a file can be made in `dir` (and removes it).
pub fn check_writable(dir: &Path, setting: Option<&'static str>) -> Result<(), FsError> {
    tempfile::Builder::new()
        .prefix(".recac-check-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| FsError::new("write in", dir, setting, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_errors_name_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let error = std::fs::create_dir_all(file.join("repo")).unwrap_err();
        let e = FsError::new(
            "create the workspace folder",
            file.join("repo"),
            Some("RECAC_WORKSPACE"),
            error,
        );
        assert!(e.is_environment());
        let text = e.to_string();
        for part in [
            "cannot create the workspace folder",
            "a-file/repo (RECAC_WORKSPACE)",
            "a part of the path is a file",
            "emptyDir",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        for (errno, words) in [
            (30, "read-only"),
            (13, "lacks the permission"),
            (28, "full"),
            (122, "full"),
        ] {
            let e = FsError::new(
                "write",
                "/x",
                Some("TMPDIR"),
                std::io::Error::from_raw_os_error(errno),
            );
            assert!(e.is_environment(), "{errno}");
            assert!(e.to_string().contains(words), "{e}");
            assert!(e.to_string().contains("/tmp"), "{e}");
        }
        // Not the environment's doing: worth another attempt.
        for errno in [4, 5, 11, 12] {
            let e = FsError::new(
                "write",
                "/x",
                None,
                std::io::Error::from_raw_os_error(errno),
            );
            assert!(!e.is_environment(), "{errno}");
        }
        let unwritable = check_writable(&file, None).unwrap_err();
        assert!(unwritable.is_environment(), "{unwritable}");
        check_writable(dir.path(), None).unwrap();
    }
}
