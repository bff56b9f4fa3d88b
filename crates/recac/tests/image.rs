//! What can be checked of the container image without a container engine: the
//! Dockerfile builds the binary `make release` builds, its runtime stages (the default
//! image, last, and the `toolchains` variant) install packages that exist in their Debian
//! release, they run as the non-root user the agent's pods use, and the build context
//! leaves out what it must not send.

use std::path::PathBuf;
use std::process::Command;

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Dockerfile's stages: (FROM line with its build arguments' defaults, instructions
/// after it).
fn stages() -> Vec<(String, Vec<String>)> {
    let text = repo_file("Dockerfile").replace("\\\n", " ");
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    let mut args: Vec<(String, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, default)) = line.strip_prefix("ARG ").and_then(|a| a.split_once('='))
            && stages.is_empty()
        {
            args.push((format!("${{{name}}}"), default.to_string()));
        } else if let Some(from) = line.strip_prefix("FROM ") {
            let from = args
                .iter()
                .fold(from.to_string(), |f, (name, value)| f.replace(name, value));
            stages.push((from, Vec::new()));
        } else if let Some((_, lines)) = stages.last_mut() {
            lines.push(line.to_string());
        }
    }
    stages
}

/// A stage's name (`FROM ... AS name`).
fn stage_name(from: &str) -> Option<&str> {
    let words: Vec<&str> = from.split_whitespace().collect();
    match words.as_slice() {
        [.., as_, name] if as_.eq_ignore_ascii_case("as") => Some(name),
        _ => None,
    }
}

#[test]
fn the_image_builds_the_binary_make_release_builds() {
    let stages = stages();
    let names: Vec<Option<&str>> = stages.iter().map(|(from, _)| stage_name(from)).collect();
    assert_eq!(
        names,
        [Some("build"), Some("toolchains"), Some("default")],
        "a build stage, the toolchains variant, and the default image last (what `docker build .` makes)"
    );
    let (build_from, build) = &stages[0];
    let build_cmd = build
        .iter()
        .find(|l| l.contains("cargo build"))
        .expect("the build stage runs cargo build");
    let makefile = repo_file("Makefile");
    let release = makefile
        .lines()
        .skip_while(|l| !l.starts_with("release:"))
        .nth(1)
        .expect("a release target")
        .trim()
        .replace("$(CARGO)", "cargo");
    // The same package and profile; the image adds --locked.
    assert!(
        build_cmd.contains(&release.replace("cargo build", "cargo build --locked"))
            || build_cmd.contains(&release.replace("--release", "--release --locked")),
        "Dockerfile `{build_cmd}` differs from `make release` (`{release}`)"
    );
    assert!(
        build_cmd.contains("target/release/recac"),
        "it copies the release binary: {build_cmd}"
    );

    let rust: Vec<u32> = build_from
        .trim_start_matches("rust:")
        .split(['-', ' '])
        .next()
        .expect("a rust version tag")
        .split('.')
        .map(|p| p.parse().expect("a numeric version"))
        .collect();
    let minimum: Vec<u32> = repo_file("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"')
        .split('.')
        .map(|p| p.parse().expect("numeric"))
        .collect();
    assert!(
        rust >= minimum,
        "the build image's Rust {rust:?} is older than rust-version {minimum:?}"
    );
}

#[test]
fn the_runtime_stages_are_non_root_with_git_and_ca_certificates() {
    let stages = stages();
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let apt = Command::new("apt-cache").arg("--version").output();
    for (stage, release, also) in [
        ("default", "bookworm", &[][..]),
        (
            "toolchains",
            "trixie",
            &[
                "cargo",
                "rustc",
                "golang-go",
                "nodejs",
                "npm",
                "python3",
                "python3-pytest",
            ][..],
        ),
    ] {
        let (from, runtime) = stages
            .iter()
            .find(|(from, _)| stage_name(from) == Some(stage))
            .unwrap_or_else(|| panic!("a stage `{stage}`"));
        assert!(from.starts_with(&format!("debian:{release}")), "{from}");
        let install = runtime
            .iter()
            .find(|l| l.contains("apt-get install"))
            .expect("the runtime stage installs packages");
        let packages: Vec<&str> = install
            .split("--no-install-recommends")
            .nth(1)
            .expect("--no-install-recommends")
            .split("&&")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        for needed in ["git", "ca-certificates"].iter().chain(also) {
            assert!(
                packages.contains(needed),
                "{stage}: {needed} in {packages:?}"
            );
        }
        assert!(
            runtime
                .iter()
                .any(|l| l.contains("COPY --from=build /recac /usr/local/bin/recac")),
            "{stage}: the binary of the build stage is the one installed"
        );
        // The agent's pods run as 65532 (`agent.runAsUser`); so does the image.
        assert!(
            runtime.iter().any(|l| l == "USER 65532:65532"),
            "{stage}: {runtime:?}"
        );
        assert!(install.contains("--uid 65532"), "{stage}: {install}");
        assert!(
            runtime.iter().any(|l| l == "ENTRYPOINT [\"recac\"]"),
            "{stage}: {runtime:?}"
        );

        // On a machine of the same Debian release, each package must exist.
        if !os.contains(&format!("VERSION_CODENAME={release}")) || apt.is_err() {
            eprintln!(
                "{stage}: skipped the package check: not a Debian {release} machine with apt-cache"
            );
            continue;
        }
        for package in packages {
            let out = Command::new("apt-cache")
                .args(["show", "--no-all-versions", package])
                .output()
                .expect("apt-cache runs");
            assert!(
                out.status.success() && !out.stdout.is_empty(),
                "package {package} is not in Debian {release}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn the_build_context_leaves_out_build_output_and_history() {
    let ignore = repo_file(".dockerignore");
    for entry in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            "{entry} in .dockerignore"
        );
    }
}
