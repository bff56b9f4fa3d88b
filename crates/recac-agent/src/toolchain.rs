//! Whether a test command's programs can start. A program that is not installed, not
//! executable or whose interpreter is missing is the image's doing: another attempt would meet
//! the same image, so the run gives up with a message naming the program and how to provide
//! it. Tests that ran and failed are the work's doing and stay retryable.
//!
//! Three checks, from the cheapest and surest:
//! - [`preflight`], before the work: the program a test command starts (the detected
//!   command's, or the first word of `RECAC_TEST_COMMAND` when it is a plain command name) is
//!   looked up on the `PATH` the command will get, and its `#!` interpreter with it.
//! - [`spawn_error`]: starting the program failed (`ENOENT`, `EACCES`, `ENOEXEC`).
//! - [`after_run`]: the command ran and reported that it could not start a program: a shell's
//!   `not found` (exit 127) or `Permission denied` (126), `env`'s `No such file or directory`
//!   (127), make's `Error 127` after one of those, or Python's `No module named pytest` for
//!   `-m`. Only a bare program name (no `/`) that is indeed not on `PATH` (or not executable
//!   there) counts: a missing `./gradlew` or `bin/run` is the repository's, and a program the
//!   command found on a `PATH` of its own is not the image's.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;

/// Where the documentation of this outcome is.
const DOCS: &str = "docs/agent.md#toolchains";

/// What a program name resolves to on a `PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// An executable file (by its mode bits).
    Found(PathBuf),
    /// Only files without any execute bit.
    NotExecutable(PathBuf),
    Missing,
}

/// Looks programs up as `execvp` does: on `PATH` for a bare name, relative to `cwd` otherwise.
#[derive(Clone, Debug)]
pub struct Finder {
    path: Option<OsString>,
    cwd: PathBuf,
}

impl Finder {
    /// `path`: the `PATH` the command gets (`None`: unset, where `execvp` searches
    /// `/bin:/usr/bin`).
    pub fn new(path: Option<OsString>, cwd: impl Into<PathBuf>) -> Self {
        Self {
            path,
            cwd: cwd.into(),
        }
    }

    /// Whether every `PATH` entry is an absolute folder (none depends on the folder the
    /// command runs in).
    pub fn absolute(&self) -> bool {
        self.path
            .as_ref()
            .is_none_or(|p| std::env::split_paths(p).all(|d| d.is_absolute()))
    }

    /// The `PATH` searched, for messages.
    pub fn path_text(&self) -> String {
        match &self.path {
            Some(p) => p.to_string_lossy().into_owned(),
            None => "unset: /bin:/usr/bin".into(),
        }
    }

    pub fn find(&self, program: &str) -> Lookup {
        if program.contains('/') {
            return check_file(&self.cwd.join(program)).unwrap_or(Lookup::Missing);
        }
        let default = OsString::from("/bin:/usr/bin");
        let path = self.path.as_ref().unwrap_or(&default);
        let mut not_executable = None;
        for dir in std::env::split_paths(path) {
            // An empty entry is the current folder.
            let dir = if dir.as_os_str().is_empty() {
                self.cwd.clone()
            } else {
                self.cwd.join(dir)
            };
            match check_file(&dir.join(program)) {
                Some(Lookup::Found(p)) => return Lookup::Found(p),
                Some(Lookup::NotExecutable(p)) => {
                    not_executable.get_or_insert(p);
                }
                _ => {}
            }
        }
        not_executable.map_or(Lookup::Missing, Lookup::NotExecutable)
    }
}

fn check_file(path: &Path) -> Option<Lookup> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    Some(if meta.permissions().mode() & 0o111 != 0 {
        Lookup::Found(path.to_path_buf())
    } else {
        Lookup::NotExecutable(path.to_path_buf())
    })
}

/// Why a program cannot start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not on `PATH`.
    NotInstalled,
    /// There, but it cannot be started: not executable, on a `noexec` filesystem, its
    /// interpreter is missing, not a program for this machine.
    Unusable { path: PathBuf, why: String },
    /// `python3 -m MODULE` found no such module.
    PythonModule(String),
}

/// A program a test command needs that the agent's image cannot start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingTool {
    /// The program (or, for [`Problem::PythonModule`], the interpreter).
    pub program: String,
    pub problem: Problem,
    /// The `PATH` searched.
    pub path: String,
}

impl MissingTool {
    fn new(program: &str, problem: Problem, finder: &Finder) -> Self {
        Self {
            program: program.to_string(),
            problem,
            path: finder.path_text(),
        }
    }

    /// What is missing, in words: "`cargo` is not installed in the agent's image (...)".
    pub fn what(&self) -> String {
        let program = &self.program;
        match &self.problem {
            Problem::NotInstalled => format!(
                "`{program}` is not installed in the agent's image (not on PATH {})",
                self.path
            ),
            Problem::Unusable { path, why } => {
                format!("`{program}` ({}) cannot be started: {why}", path.display())
            }
            Problem::PythonModule(module) => format!(
                "the Python module `{module}` is not installed in the agent's image (`{program} -m {module}` found no module named {module})"
            ),
        }
    }

    /// The whole message: what is missing, the command, and how to provide it.
    pub fn message(&self, command: &TestCommand) -> String {
        let version = env!("CARGO_PKG_VERSION");
        // npm runs its scripts with node_modules/.bin on PATH: a tool missing there is a
        // dependency that was never installed (the agent installs none).
        let npm = command.shown.split_whitespace().any(|w| w == "npm")
            && self.problem == Problem::NotInstalled
            && !["npm", "node", "sh"].contains(&self.program.as_str());
        let dependencies = if npm {
            " (if it is one of the package's dependencies, install them first: RECAC_TEST_COMMAND=\"npm ci && npm test\")"
        } else {
            ""
        };
        format!(
            "the tests cannot run: {}{dependencies}; the test command is `{}` ({}). Run the agent in an image that has it: the toolchains variant (ghcr.io/recac-io/recac:{version}-toolchains) or your own image FROM ghcr.io/recac-io/recac, as agent.image (per source: template.image; per task: spec.agent.image); or change RECAC_TEST_COMMAND (`none` skips the tests). See {DOCS}",
            self.what(),
            command.shown,
            command.source,
        )
    }
}

/// The test command a run uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCommand {
    /// What is started: the detected argv, or `sh -c COMMAND`.
    pub argv: Vec<String>,
    /// The command as people write it.
    pub shown: String,
    /// Where it came from: "detected from Cargo.toml", "RECAC_TEST_COMMAND".
    pub source: String,
    /// Given by `RECAC_TEST_COMMAND` (run through `sh -c`).
    pub configured: bool,
}

impl TestCommand {
    /// A detected command: `argv`, found because of `file`.
    pub fn detected(argv: Vec<String>, file: &str) -> Self {
        Self {
            shown: argv.join(" "),
            argv,
            source: format!("detected from {file}"),
            configured: false,
        }
    }

    /// `RECAC_TEST_COMMAND`, run with `sh -c`.
    pub fn configured(command: &str) -> Self {
        Self {
            argv: vec!["sh".into(), "-c".into(), command.into()],
            shown: command.to_string(),
            source: "RECAC_TEST_COMMAND".into(),
            configured: true,
        }
    }

    /// The Python module the command runs with `python3 -m`, when it is a detected one.
    pub fn python_module(&self) -> Option<(&str, &str)> {
        match self.argv.as_slice() {
            [python, m, module, ..] if !self.configured && m == "-m" => Some((python, module)),
            _ => None,
        }
    }
}

/// Shell words that are not programs looked up on `PATH` (reserved words and the builtins of
/// dash, bash and busybox ash): a first word among them is not checked.
const SHELL_WORDS: &[&str] = &[
    "!",
    "{",
    "}",
    "[",
    "[[",
    ".",
    ":",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "case",
    "cd",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "coproc",
    "declare",
    "dirs",
    "disown",
    "do",
    "done",
    "echo",
    "elif",
    "else",
    "enable",
    "esac",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "fi",
    "for",
    "function",
    "getopts",
    "hash",
    "help",
    "history",
    "if",
    "in",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "select",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "then",
    "time",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "until",
    "wait",
    "while",
];

/// The program `sh -c COMMAND` starts first, when that is certain: the first word after any
/// `NAME=value` assignments, if it is a plain command name (letters, digits, `._+-`; no
/// quoting, expansion or `/`) followed by a blank or the end, and not a shell word.
pub fn first_program(command: &str) -> Option<&str> {
    static ASSIGNMENT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9_.,:/@%+=-]*$").unwrap());
    static NAME: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$").unwrap());
    let word = command
        .split_whitespace()
        .find(|w| !ASSIGNMENT.is_match(w))?;
    // `PATH=... tool`: the tool is looked up on a PATH of the command's own.
    let sets_path = command
        .split_whitespace()
        .take_while(|w| ASSIGNMENT.is_match(w))
        .any(|w| w.starts_with("PATH="));
    // Quoting, an expansion, a path or an operator glued to the word: not certain.
    (!sets_path && NAME.is_match(word) && !SHELL_WORDS.contains(&word)).then_some(word)
}

/// The program a test command starts first and must find, when that is certain: the
/// detected command's, or `sh` and the first word of a configured one.
fn programs(command: &TestCommand) -> Vec<&str> {
    let mut out = vec![command.argv[0].as_str()];
    if command.configured
        && let Some(first) = first_program(&command.shown)
    {
        out.push(first);
    }
    out
}

/// Before the work: whether the programs the test command will start first are there.
pub fn preflight(command: &TestCommand, finder: &Finder) -> Option<MissingTool> {
    // A relative PATH entry names a folder of the repository, which the work may fill.
    if !finder.absolute() {
        return None;
    }
    programs(command)
        .into_iter()
        .find_map(|program| match finder.find(program) {
            Lookup::Missing => Some(MissingTool::new(program, Problem::NotInstalled, finder)),
            Lookup::NotExecutable(path) => Some(MissingTool::new(
                program,
                Problem::Unusable {
                    why: not_executable_why(&path),
                    path,
                },
                finder,
            )),
            Lookup::Found(path) => missing_interpreter(&path, finder)
                .map(|why| MissingTool::new(program, Problem::Unusable { path, why }, finder)),
        })
}

/// Why a script's `#!` interpreter cannot start it, when it cannot: `#!/abs/interpreter`
/// that does not exist, or `#!/usr/bin/env NAME` with `NAME` not on `PATH`.
fn missing_interpreter(script: &Path, finder: &Finder) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = String::from_utf8_lossy(line);
    let line = line.lines().next()?.trim();
    let mut words = line.split_whitespace();
    let interpreter = words.next()?;
    if !Path::new(interpreter).exists() {
        return Some(format!(
            "its interpreter `{interpreter}` (#!) is not installed"
        ));
    }
    if interpreter.ends_with("/env") {
        let name = words.find(|w| !w.starts_with('-'))?;
        if !name.contains('/') && finder.find(name) == Lookup::Missing {
            return Some(format!(
                "its interpreter `{name}` (#!{line}) is not installed (not on PATH {})",
                finder.path_text()
            ));
        }
    }
    None
}

fn not_executable_why(path: &Path) -> String {
    if mounted_noexec(path) {
        "its filesystem is mounted noexec".into()
    } else {
        "it is not executable (no execute permission)".into()
    }
}

/// Starting `program` failed with `error`: why, when it is the image's doing (a program that
/// is missing or unusable). `None` for other errors (out of processes, memory).
pub fn spawn_error(program: &str, error: &std::io::Error, finder: &Finder) -> Option<MissingTool> {
    use std::io::ErrorKind;
    let unusable = |path: PathBuf, why: String| {
        Some(MissingTool::new(
            program,
            Problem::Unusable { path, why },
            finder,
        ))
    };
    if !finder.cwd.is_dir() {
        // ENOENT from a missing working folder, not from the program.
        return None;
    }
    match (error.kind(), finder.find(program)) {
        (ErrorKind::NotFound | ErrorKind::PermissionDenied, Lookup::Missing) => {
            Some(MissingTool::new(program, Problem::NotInstalled, finder))
        }
        (ErrorKind::NotFound, Lookup::Found(path)) => {
            // The file is there: execve's ENOENT is about its interpreter.
            let why = missing_interpreter(&path, finder)
                .unwrap_or_else(|| format!("its interpreter (#!) or loader is missing ({error})"));
            unusable(path, why)
        }
        (ErrorKind::PermissionDenied, Lookup::Found(path) | Lookup::NotExecutable(path)) => {
            let why = not_executable_why(&path);
            unusable(path, why)
        }
        // ENOEXEC: not a program for this machine (another architecture, a broken file).
        (_, Lookup::Found(path)) if error.raw_os_error() == Some(8) => unusable(
            path,
            format!("it is not a program for this machine ({error})"),
        ),
        _ => None,
    }
}

static SHELL_NOT_FOUND: LazyLock<Regex> = LazyLock::new(|| {
    // dash `sh: 1: X: not found`, busybox `sh: X: not found`, bash `bash: line 1: X: command
    // not found`, zsh `zsh:1: command not found: X`.
    Regex::new(
        r"^\S+: (?:(?:line )?\d+: )?([^\s:/'‘’]+): (?:command )?not found$|^\S+:\d+: command not found: ([^\s:/]+)$",
    )
    .unwrap()
});
static SHELL_DENIED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\S+: (?:(?:line )?\d+: )?([^\s:/'‘’]+): Permission denied$").unwrap()
});
static ENV_NOT_FOUND: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\S*env: ['‘]([^\s/'‘’]+)['’]: (No such file or directory|Permission denied)$")
        .unwrap()
});
static MAKE_EXEC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^make(?:\[\d+\])?: ([^\s:/]+): (No such file or directory|Permission denied)$")
        .unwrap()
});
static MAKE_ERROR_127: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^make(?:\[\d+\])?: \*\*\* \[.*\] Error 12[67]$").unwrap());
static PYTHON_NO_MODULE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\S*python[0-9.]*): No module named ([A-Za-z0-9_.]+)$").unwrap()
});

/// The command ran and ended with `exit_code` and `stderr`: whether it reported that it could
/// not start a program the image lacks (see the module's documentation). `None`: the tests
/// ran (and passed or failed).
pub fn after_run(
    command: &TestCommand,
    exit_code: Option<i32>,
    stderr: &str,
    finder: &Finder,
) -> Option<MissingTool> {
    let code = exit_code?;
    let lines: Vec<&str> = stderr.lines().map(str::trim_end).collect();
    // Python's own report for `-m MODULE`, of the module the command runs.
    let runs_module = |module: &str| match command.python_module() {
        Some((_, m)) => m == module,
        None => {
            command.configured
                && command
                    .shown
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w[0] == "-m" && w[1] == module)
        }
    };
    if code == 1
        && let Some(line) = lines
            .iter()
            .rev()
            .filter_map(|l| PYTHON_NO_MODULE.captures(l))
            .find(|c| runs_module(&c[2]))
    {
        let python = Path::new(&line[1])
            .file_name()
            .map_or(line[1].to_string(), |n| n.to_string_lossy().into_owned());
        return Some(MissingTool::new(
            &python,
            Problem::PythonModule(line[2].to_string()),
            finder,
        ));
    }
    let make_failed = lines.iter().any(|l| MAKE_ERROR_127.is_match(l));
    if !(code == 126 || code == 127 || make_failed) {
        return None;
    }
    // The last report is the one that ended the command.
    lines.iter().rev().find_map(|line| {
        let name = SHELL_NOT_FOUND
            .captures(line)
            .and_then(|c| c.get(1).or_else(|| c.get(2)))
            .or_else(|| SHELL_DENIED.captures(line).and_then(|c| c.get(1)))
            .or_else(|| ENV_NOT_FOUND.captures(line).and_then(|c| c.get(1)))
            .or_else(|| {
                make_failed
                    .then(|| MAKE_EXEC.captures(line).and_then(|c| c.get(1)))
                    .flatten()
            })?
            .as_str();
        match finder.find(name) {
            Lookup::Missing => Some(MissingTool::new(name, Problem::NotInstalled, finder)),
            Lookup::NotExecutable(path) => Some(MissingTool::new(
                name,
                Problem::Unusable {
                    why: not_executable_why(&path),
                    path,
                },
                finder,
            )),
            // Found and executable: a noexec mount refuses it; otherwise the command ran with
            // a PATH of its own, and the program is not the image's business.
            Lookup::Found(path) if mounted_noexec(&path) => Some(MissingTool::new(
                name,
                Problem::Unusable {
                    path,
                    why: "its filesystem is mounted noexec".into(),
                },
                finder,
            )),
            Lookup::Found(_) => None,
        }
    })
}

/// Whether `path` lies on a filesystem mounted `noexec` (from `/proc/self/mountinfo`).
pub fn mounted_noexec(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    noexec_in(&info, &path)
}

/// Whether the mount holding `path` (the longest mount point above it; the later of equal
/// ones) is `noexec`, per this `mountinfo` text.
fn noexec_in(mountinfo: &str, path: &Path) -> bool {
    let mut best: Option<(usize, bool)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let point = unescape(point);
        if !path.starts_with(&point) {
            continue;
        }
        let depth = Path::new(&point).components().count();
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, options.split(',').any(|o| o == "noexec")));
        }
    }
    best.is_some_and(|(_, noexec)| noexec)
}

/// mountinfo's octal escapes (`\040` for a blank).
fn unescape(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// The `PATH` a child gets from these changes to the agent's environment (`set`, in order;
/// `removed`).
pub fn child_path<'a>(
    set: impl IntoIterator<Item = (&'a str, &'a str)>,
    removed: impl IntoIterator<Item = &'a str>,
) -> Option<OsString> {
    if let Some((_, v)) = set.into_iter().filter(|(k, _)| *k == "PATH").last() {
        return Some(OsString::from(v));
    }
    if removed.into_iter().any(|k| k == "PATH") {
        return None;
    }
    std::env::var_os("PATH")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(dirs: &[&Path]) -> OsString {
        std::env::join_paths(dirs.iter().map(|d| d.as_os_str())).unwrap_or_default()
    }

    fn exe(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn finder(dir: &Path) -> Finder {
        Finder::new(Some(path_of(&[dir])), dir)
    }

    #[test]
    fn finds_programs_as_execvp_does() {
        let d = tempfile::tempdir().unwrap();
        let tool = exe(d.path(), "tool", "", 0o755);
        let plain = exe(d.path(), "plain", "", 0o644);
        let f = finder(d.path());
        assert_eq!(f.find("tool"), Lookup::Found(tool.clone()));
        assert_eq!(f.find("plain"), Lookup::NotExecutable(plain));
        assert_eq!(f.find("nope"), Lookup::Missing);
        assert_eq!(f.find("./tool"), Lookup::Found(d.path().join("./tool")));
        // A folder is not a program.
        std::fs::create_dir(d.path().join("dir")).unwrap();
        assert_eq!(f.find("dir"), Lookup::Missing);
    }

    #[test]
    fn first_programs_only_when_certain() {
        assert_eq!(first_program("cargo test --all"), Some("cargo"));
        assert_eq!(
            first_program("  RUST_LOG=debug X=1 cargo test"),
            Some("cargo")
        );
        assert_eq!(first_program("python3.12 -m pytest"), Some("python3.12"));
        for unsure in [
            "cd sub && cargo test",
            "./gradlew test",
            "bin/test",
            "\"cargo\" test",
            "$CARGO test",
            "cargo;true",
            "(cargo test)",
            "if true; then cargo test; fi",
            "exec cargo test",
            "test -f x",
            "X=\"a b\" cargo test",
            "PATH=/opt/tool/bin:/usr/bin mytool --check",
            "",
        ] {
            assert_eq!(first_program(unsure), None, "{unsure}");
        }
    }

    #[test]
    fn preflight_names_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        exe(d.path(), "sh", "", 0o755);
        exe(d.path(), "make", "", 0o755);
        exe(d.path(), "tests", "", 0o644);
        exe(d.path(), "npm", "#!/usr/bin/env recac-no-node\n", 0o755);
        exe(d.path(), "yarn", "#!/nonexistent/node\n", 0o755);
        let f = finder(d.path());
        let detected = |argv: &[&str]| {
            TestCommand::detected(argv.iter().map(|s| s.to_string()).collect(), "x")
        };
        assert_eq!(preflight(&detected(&["make", "test"]), &f), None);
        let missing = preflight(&detected(&["cargo", "test"]), &f).unwrap();
        assert_eq!(
            (missing.program.as_str(), &missing.problem),
            ("cargo", &Problem::NotInstalled)
        );
        let message = missing.message(&detected(&["cargo", "test"]));
        for part in [
            "`cargo` is not installed",
            "agent.image",
            "toolchains",
            "`cargo test` (detected from x)",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let jest = MissingTool::new("jest", Problem::NotInstalled, &f);
        assert!(
            jest.message(&detected(&["npm", "test"]))
                .contains("install them first: RECAC_TEST_COMMAND=\"npm ci && npm test\"")
        );
        assert!(
            !missing
                .message(&detected(&["cargo", "test"]))
                .contains("npm ci")
        );
        let npm = preflight(&detected(&["npm", "test"]), &f).unwrap();
        assert!(npm.what().contains("`recac-no-node`"), "{}", npm.what());
        let yarn = preflight(&detected(&["yarn", "test"]), &f).unwrap();
        assert!(yarn.what().contains("/nonexistent/node"), "{}", yarn.what());
        let tests = preflight(&detected(&["tests"]), &f).unwrap();
        assert!(tests.what().contains("not executable"), "{}", tests.what());

        assert_eq!(preflight(&TestCommand::configured("make check"), &f), None);
        assert_eq!(
            preflight(&TestCommand::configured("cd x && cargo t"), &f),
            None
        );
        let cargo = preflight(&TestCommand::configured("cargo test"), &f).unwrap();
        assert_eq!(cargo.program, "cargo");
        // No sh at all.
        let empty = tempfile::tempdir().unwrap();
        let none = preflight(&TestCommand::configured("make"), &finder(empty.path())).unwrap();
        assert_eq!(none.program, "sh");
    }

    #[test]
    fn spawn_errors_are_classified() {
        let d = tempfile::tempdir().unwrap();
        exe(d.path(), "plain", "", 0o644);
        exe(d.path(), "script", "#!/nonexistent/interp\n", 0o755);
        let f = finder(d.path());
        let enoent = std::io::Error::from_raw_os_error(2);
        let eacces = std::io::Error::from_raw_os_error(13);
        let eagain = std::io::Error::from_raw_os_error(11);
        let enoexec = std::io::Error::from_raw_os_error(8);
        assert_eq!(
            spawn_error("cargo", &enoent, &f).unwrap().problem,
            Problem::NotInstalled
        );
        let script = spawn_error("script", &enoent, &f).unwrap();
        assert!(
            script.what().contains("/nonexistent/interp"),
            "{}",
            script.what()
        );
        let plain = spawn_error("plain", &eacces, &f).unwrap();
        assert!(plain.what().contains("not executable"), "{}", plain.what());
        assert!(
            spawn_error("script", &enoexec, &f)
                .unwrap()
                .what()
                .contains("not a program for this machine")
        );
        assert_eq!(spawn_error("script", &eagain, &f), None);
    }

    #[test]
    fn reports_of_commands_that_could_not_start_a_program() {
        let d = tempfile::tempdir().unwrap();
        exe(d.path(), "git", "", 0o755);
        exe(d.path(), "plain", "", 0o644);
        let f = finder(d.path());
        let pytest = TestCommand::detected(
            ["python3", "-m", "pytest"].map(String::from).to_vec(),
            "pyproject.toml",
        );
        let program =
            |code: i32, stderr: &str| after_run(&pytest, Some(code), stderr, &f).map(|m| m.program);
        let some = |s: &str| Some(s.to_string());
        // Shells, env, npm (the shell's report and its exit code), make.
        assert_eq!(program(127, "sh: 1: cargo: not found\n"), some("cargo"));
        assert_eq!(program(127, "sh: cargo: not found"), some("cargo"));
        assert_eq!(
            program(127, "bash: line 1: cargo: command not found"),
            some("cargo")
        );
        assert_eq!(
            program(127, "bash: cargo: command not found"),
            some("cargo")
        );
        assert_eq!(
            program(127, "zsh:1: command not found: cargo"),
            some("cargo")
        );
        assert_eq!(
            program(127, "/usr/bin/env: ‘node’: No such file or directory"),
            some("node")
        );
        assert_eq!(
            program(127, "env: 'node': No such file or directory"),
            some("node")
        );
        assert_eq!(
            program(127, "\n> test\n> jest\n\nsh: 1: jest: not found\n"),
            some("jest")
        );
        assert_eq!(
            program(
                2,
                "make: cargo: No such file or directory\nmake: *** [Makefile:2: test] Error 127\n"
            ),
            some("cargo")
        );
        assert_eq!(
            program(
                2,
                "/bin/sh: 1: cargo: not found\nmake: *** [Makefile:2: test] Error 127"
            ),
            some("cargo")
        );
        assert_eq!(
            program(126, "sh: 1: plain: Permission denied"),
            some("plain")
        );
        assert_eq!(
            program(1, "/usr/bin/python3: No module named pytest\n"),
            some("python3")
        );
        // Tests that ran: another exit code, a path (the repository's), a program that is on
        // PATH, make failing otherwise, an import error inside the tests.
        assert_eq!(program(1, "sh: 1: cargo: not found"), None);
        assert_eq!(program(101, "bash: cargo: command not found"), None);
        assert_eq!(program(127, "sh: 1: ./gradlew: not found"), None);
        assert_eq!(program(127, "sh: 1: git: not found"), None);
        assert_eq!(program(127, "no report"), None);
        assert_eq!(
            program(
                2,
                "make: cargo: No such file or directory\nmake: *** [Makefile:2: test] Error 1"
            ),
            None
        );
        assert_eq!(
            program(1, "E   ModuleNotFoundError: No module named 'requests'"),
            None
        );
        assert_eq!(program(1, "/usr/bin/python3: No module named other"), None);
        assert_eq!(
            after_run(&pytest, None, "sh: 1: cargo: not found", &f),
            None
        );
        let configured = TestCommand::configured("python3 -m pytest -q");
        assert_eq!(
            after_run(&configured, Some(1), "python3: No module named pytest", &f)
                .map(|m| m.problem),
            Some(Problem::PythonModule("pytest".into()))
        );
    }

    #[test]
    fn noexec_mounts_are_found() {
        let info = "22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n\
                    23 22 0:22 / /tmp rw,nosuid,noexec - tmpfs tmpfs rw\n\
                    24 23 0:23 / /tmp/exec rw - tmpfs tmpfs rw\n\
                    25 22 0:24 / /my\\040dir rw,noexec - tmpfs tmpfs rw\n";
        assert!(noexec_in(info, Path::new("/tmp/x/tool")));
        assert!(!noexec_in(info, Path::new("/tmp/exec/tool")));
        assert!(!noexec_in(info, Path::new("/tmpx/tool")));
        assert!(!noexec_in(info, Path::new("/usr/bin/cargo")));
        assert!(noexec_in(info, Path::new("/my dir/tool")));
    }

    #[test]
    fn child_paths_follow_the_changes() {
        assert_eq!(
            child_path([("X", "1"), ("PATH", "/a"), ("PATH", "/b")], []),
            Some(OsString::from("/b"))
        );
        assert_eq!(child_path([], ["PATH"]), None);
        assert_eq!(child_path([], []), std::env::var_os("PATH"));
    }
}
