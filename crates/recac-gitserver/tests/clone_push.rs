//! Real git clients against the server: clone and push over HTTPS with a token, and
//! refusal without it.

use std::path::Path;
use std::process::Command;

use recac_gitserver::{GitServer, GitServerOptions, create_repository};

fn git(dir: &Path, ca: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSL_CAINFO", ca)
        .output()
        .expect("git runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_and_push_over_https_with_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("repos");
    std::fs::create_dir_all(&root).expect("root");
    create_repository(
        &root,
        "demo.git",
        "main",
        &[("README.md", "demo\n"), ("test.sh", "exit 0\n")],
        "initial",
    )
    .expect("repository created");
    let server = GitServer::start(GitServerOptions {
        tls: true,
        ..GitServerOptions::plain(&root, "s3cret")
    })
    .await
    .expect("server starts");
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, server.ca_pem().expect("a CA with TLS")).expect("ca written");

    let port = server.address().port();
    let with_token = format!("https://x-access-token:s3cret@127.0.0.1:{port}/demo.git");
    let wrong_token = format!("https://x-access-token:nope@127.0.0.1:{port}/demo.git");

    let refused = git(
        dir.path(),
        &ca,
        &["clone", "--quiet", &wrong_token, "refused"],
    );
    assert!(!refused.status.success(), "a wrong token is refused");

    let cloned = git(dir.path(), &ca, &["clone", "--quiet", &with_token, "work"]);
    assert!(
        cloned.status.success(),
        "clone: {}",
        String::from_utf8_lossy(&cloned.stderr)
    );
    let work = dir.path().join("work");
    assert!(work.join("test.sh").is_file());
    assert_eq!(
        std::fs::metadata(work.join("test.sh"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111)
            .expect("metadata"),
        0o111,
        "scripts stay executable"
    );
    std::fs::write(work.join("new.txt"), "hello\n").expect("write");
    for args in [
        vec!["add", "new.txt"],
        vec![
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "add",
        ],
        vec!["push", "--quiet", "origin", "HEAD:refs/heads/feature"],
    ] {
        let out = git(&work, &ca, &args);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let branches =
        recac_gitserver::git(&root.join("demo.git"), &["branch", "--list"]).expect("branches");
    assert!(branches.contains("feature"), "pushed: {branches}");
    let log = server.log();
    assert!(log.iter().any(|l| l.ends_with(" 401")), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST /demo.git/git-receive-pack") && l.ends_with(" 200")),
        "{log:?}"
    );
}
