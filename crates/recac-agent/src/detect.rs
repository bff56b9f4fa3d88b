//! Which test command a repository uses (pure: it looks only at the files it is given).
//!
//! The programs these commands start (`make`, `cargo`, `npm`, `python3` with pytest, `go`)
//! must be in the agent's image; [`crate::toolchain`] checks that before the work and tells a
//! missing program from failing tests.

/// What the repository's top level holds, as far as test detection cares.
#[derive(Clone, Debug, Default)]
pub struct RepoFiles {
    /// The Makefile's text (`Makefile`, `makefile` or `GNUmakefile`), when present.
    pub makefile: Option<String>,
    pub has_cargo_toml: bool,
    /// package.json's text, when present.
    pub package_json: Option<String>,
    pub has_pyproject: bool,
    pub has_go_mod: bool,
}

impl RepoFiles {
    /// Reads the files detection needs from `dir`.
    pub fn read(dir: &std::path::Path) -> Self {
        let text = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        RepoFiles {
            makefile: text("GNUmakefile")
                .or_else(|| text("makefile"))
                .or_else(|| text("Makefile")),
            has_cargo_toml: dir.join("Cargo.toml").is_file(),
            package_json: text("package.json"),
            has_pyproject: dir.join("pyproject.toml").is_file(),
            has_go_mod: dir.join("go.mod").is_file(),
        }
    }
}

/// The test command (argv) for a repository, or `None` when nothing is recognised. Order: a
/// Makefile with a `test` target, Cargo.toml, package.json with a real `test` script,
/// pyproject.toml, go.mod.
pub fn detect(files: &RepoFiles) -> Option<Vec<String>> {
    detect_with_source(files).map(|(argv, _)| argv)
}

/// [`detect`], with the file that decided it (`Makefile`, `Cargo.toml`, `package.json`,
/// `pyproject.toml`, `go.mod`).
pub fn detect_with_source(files: &RepoFiles) -> Option<(Vec<String>, &'static str)> {
    let argv = |a: &[&str], file| Some((a.iter().map(|s| s.to_string()).collect(), file));
    if files.makefile.as_deref().is_some_and(has_test_target) {
        return argv(&["make", "test"], "Makefile");
    }
    if files.has_cargo_toml {
        return argv(&["cargo", "test"], "Cargo.toml");
    }
    if let Some(pkg) = &files.package_json
        && has_npm_test(pkg)
    {
        return argv(&["npm", "test"], "package.json");
    }
    if files.has_pyproject {
        return argv(&["python3", "-m", "pytest"], "pyproject.toml");
    }
    if files.has_go_mod {
        return argv(&["go", "test", "./..."], "go.mod");
    }
    None
}

fn has_test_target(makefile: &str) -> bool {
    makefile.lines().any(|line| {
        let Some(rest) = line.strip_prefix("test") else {
            return false;
        };
        let rest = rest.trim_start();
        rest.starts_with(':') && !rest.starts_with(":=")
    })
}

fn has_npm_test(package_json: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(package_json) else {
        return false;
    };
    match value.pointer("/scripts/test").and_then(|v| v.as_str()) {
        Some(script) => !script.contains("no test specified"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(files: RepoFiles) -> Option<String> {
        detect(&files).map(|v| v.join(" "))
    }

    #[test]
    fn detects() {
        assert_eq!(cmd(RepoFiles::default()), None);
        let mk = |t: &str| RepoFiles {
            makefile: Some(t.into()),
            has_cargo_toml: true,
            ..Default::default()
        };
        assert_eq!(
            cmd(mk("build:\n\tcc x\ntest: build\n\t./t\n")).as_deref(),
            Some("make test")
        );
        assert_eq!(cmd(mk("test := 1\nall:\n")).as_deref(), Some("cargo test"));
        assert_eq!(cmd(mk("testing:\n")).as_deref(), Some("cargo test"));
        let npm = |s: &str| RepoFiles {
            package_json: Some(s.into()),
            has_go_mod: true,
            ..Default::default()
        };
        assert_eq!(
            cmd(npm(r#"{"scripts":{"test":"jest"}}"#)).as_deref(),
            Some("npm test")
        );
        assert_eq!(
            cmd(npm(
                r#"{"scripts":{"test":"echo \"Error: no test specified\" && exit 1"}}"#
            ))
            .as_deref(),
            Some("go test ./...")
        );
        assert_eq!(cmd(npm("not json")).as_deref(), Some("go test ./..."));
        assert_eq!(
            cmd(RepoFiles {
                has_pyproject: true,
                has_go_mod: true,
                ..Default::default()
            })
            .as_deref(),
            Some("python3 -m pytest")
        );
        assert_eq!(
            detect_with_source(&RepoFiles {
                has_go_mod: true,
                ..Default::default()
            })
            .map(|(_, file)| file),
            Some("go.mod")
        );
    }
}
