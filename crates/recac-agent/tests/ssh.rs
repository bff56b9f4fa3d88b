//! git over ssh with a real OpenSSH server on loopback (see `support/sshd.rs`): the known
//! hosts and the private key from the agent's settings, the key offered only within its
//! scopes, and clear, permanent errors for an unknown or changed host key and a missing or
//! refused key. Each test is skipped (saying so) where no sshd is installed.

#[path = "support/sshd.rs"]
mod sshd;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use recac_agent::git::{Git, GitErrorKind, Identity, SshKey, SshSettings};
use recac_agent::redact::Redactor;
use recac_api::agent_contract::Outcome;
use recac_api::repo_host::HostScope;
use sshd::Sshd;
use support::{bare_repo, mount_secret, remote_head, run_with, show};

/// The server, a bare repository on it and a known_hosts file that knows the server.
struct Fixture {
    root: tempfile::TempDir,
    server: Sshd,
    bare: PathBuf,
    known_hosts: PathBuf,
}

fn fixture() -> Option<Fixture> {
    let root = tempfile::tempdir().unwrap();
    let server = Sshd::start(&root.path().join("sshd"))?;
    let bare = bare_repo(root.path(), "r.git", &[]);
    let known_hosts = root.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "# the test server\ngithub.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n{}\n",
            server.known_hosts_line
        ),
    )
    .unwrap();
    Some(Fixture {
        root,
        server,
        bare,
        known_hosts,
    })
}

impl Fixture {
    fn settings(&self, known_hosts: Option<&Path>, key: Option<&str>, scopes: &str) -> SshSettings {
        SshSettings {
            known_hosts: known_hosts.map(Path::to_path_buf),
            private_key: key.map(SshKey::new),
            key_scopes: HostScope::parse_list(scopes).unwrap(),
            proxy_command: None,
        }
    }

    fn git(&self, name: &str, ssh: &SshSettings) -> Git {
        let redactor = Redactor::new(vec![self.server.client_key.trim().to_string()]);
        Git::new(&self.root.path().join(name), None, None, ssh, redactor).expect("git")
    }

    fn url(&self) -> String {
        self.server.url(&self.bare)
    }
}

#[tokio::test]
async fn clones_and_pushes_with_the_key_and_known_hosts() {
    let Some(f) = fixture() else { return };
    let ssh = f.settings(
        Some(&f.known_hosts),
        Some(&f.server.client_key),
        &f.server.host(),
    );
    let git = f.git("work", &ssh);
    git.clone_repo(&f.url())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.server.log_text()));
    // The key's private copy (mode 0600, in a folder only the agent can enter) exists only
    // while git reaches the remote: the clone is over, so it is gone.
    let key_file = git.ssh_key_file().expect("a key file").to_path_buf();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(key_file.parent().unwrap()), 0o700);
    assert!(!key_file.exists(), "the key's copy outlives the clone");

    git.fetch_branch("main").await.expect("fetch");
    git.checkout("recac/SSH-1", "main").await.expect("checkout");
    std::fs::write(git.dir().join("value.txt"), "value = 2\n").unwrap();
    let who = Identity {
        name: "recac".into(),
        email: "recac@example.com".into(),
    };
    assert!(git.commit_all("SSH-1: over ssh", &who).await.unwrap());
    git.push("recac/SSH-1").await.expect("push over ssh");
    assert_eq!(show(&f.bare, "recac/SSH-1", "value.txt"), "value = 2");
    // The copy goes with the git that made it.
    drop(git);
    assert!(!key_file.exists() && !key_file.parent().unwrap().exists());
}

#[tokio::test]
async fn an_unknown_host_key_is_a_permanent_error_naming_the_host_and_the_setting() {
    let Some(f) = fixture() else { return };
    // A known_hosts file without the server.
    let other = f.root.path().join("other_hosts");
    std::fs::write(
        &other,
        "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
    )
    .unwrap();
    let ssh = f.settings(Some(&other), Some(&f.server.client_key), &f.server.host());
    let git = f.git("unknown", &ssh);
    let err = git.clone_repo(&f.url()).await.expect_err("refused");
    assert_eq!(err.kind, GitErrorKind::HostKey, "{err}");
    assert!(err.kind.is_permanent());
    let text = err.to_string();
    let unknown = format!("the SSH host key of {} is not known", f.server.host());
    for needle in [
        unknown.as_str(),
        "agent.ssh.knownHosts",
        "RECAC_SSH_KNOWN_HOSTS is",
        "Host key verification failed",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(!text.contains("OPENSSH PRIVATE KEY"), "{text}");
    // Nothing was accepted and remembered.
    assert_eq!(
        std::fs::read_to_string(&other).unwrap().lines().count(),
        1,
        "the known hosts were not changed"
    );
}

#[tokio::test]
async fn a_changed_host_key_is_refused_too() {
    let Some(f) = fixture() else { return };
    let impostor = f.root.path().join("impostor");
    sshd::keygen(&impostor);
    let changed = f.root.path().join("changed_hosts");
    std::fs::write(
        &changed,
        format!(
            "[127.0.0.1]:{} {}\n",
            f.server.port,
            sshd::public_key(&impostor)
        ),
    )
    .unwrap();
    let ssh = f.settings(Some(&changed), Some(&f.server.client_key), &f.server.host());
    let err = f
        .git("changed", &ssh)
        .clone_repo(&f.url())
        .await
        .expect_err("refused");
    assert_eq!(err.kind, GitErrorKind::HostKey, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("does not match") && text.contains("agent.ssh.knownHosts"),
        "{text}"
    );
}

#[tokio::test]
async fn no_key_a_key_out_of_scope_and_a_refused_key_say_which() {
    let Some(f) = fixture() else { return };
    // No key configured (in a pod ssh has no identity of its own).
    let ssh = f.settings(Some(&f.known_hosts), None, &f.server.host());
    let err = f
        .git("nokey", &ssh)
        .clone_repo(&f.url())
        .await
        .expect_err("refused");
    assert_eq!(err.kind, GitErrorKind::AuthRefused, "{err}");
    assert!(err.kind.is_permanent());
    assert!(
        err.message.contains("no SSH key is configured")
            && err.message.contains("RECAC_SSH_PRIVATE_KEY"),
        "{err}"
    );

    // A key for other hosts is not offered here.
    let ssh = f.settings(
        Some(&f.known_hosts),
        Some(&f.server.client_key),
        "github.com",
    );
    let git = f.git("scoped", &ssh);
    let err = git.clone_repo(&f.url()).await.expect_err("refused");
    assert_eq!(err.kind, GitErrorKind::AuthRefused, "{err}");
    assert!(
        err.message.contains(&format!(
            "RECAC_SSH_PRIVATE_KEY is not offered to {}",
            f.server.host()
        )) && err.message.contains("it is for: github.com"),
        "{err}"
    );
    // The server never saw the key: it logs every key it is offered.
    let fingerprint = std::process::Command::new("ssh-keygen")
        .args(["-l", "-f"])
        .arg(f.root.path().join("sshd/client_key.pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    assert!(
        !f.server.log_text().contains(&fingerprint),
        "the key was offered:\n{}",
        f.server.log_text()
    );

    // A key the server does not know.
    let stranger = f.root.path().join("stranger_key");
    sshd::keygen(&stranger);
    let stranger_key = std::fs::read_to_string(&stranger).unwrap();
    let ssh = f.settings(Some(&f.known_hosts), Some(&stranger_key), &f.server.host());
    let err = f
        .git("stranger", &ssh)
        .clone_repo(&f.url())
        .await
        .expect_err("refused");
    assert_eq!(err.kind, GitErrorKind::AuthRefused, "{err}");
    assert!(
        err.message
            .contains("the server refused the SSH key in RECAC_SSH_PRIVATE_KEY"),
        "{err}"
    );
}

/// Set in the child process of [`the_whole_run_works_over_ssh_and_keeps_the_key_from_commands`].
const CHILD: &str = "RECAC_SSH_TEST_CHILD";

/// The whole agent run over ssh, as in a pod: the key from a mounted Secret (a file mode ssh
/// would refuse), the known hosts and the scopes from the environment. It runs in a child
/// process, because git's ssh settings are read from the process's environment. The engine
/// (an external command) and the tests record their environment: neither gets the key nor
/// git's ssh command.
#[test]
fn the_whole_run_works_over_ssh_and_keeps_the_key_from_commands() {
    if std::env::var_os(CHILD).is_some() {
        return child_run();
    }
    let Some(f) = fixture() else { return };
    let secrets = f.root.path().join("secrets");
    mount_secret(
        &secrets,
        "git-ssh",
        &[("RECAC_SSH_PRIVATE_KEY", f.server.client_key.trim())],
    );
    // As a Secret volume may be: readable by the group, which ssh refuses for a key file.
    let stamp = secrets.join("git-ssh/..2026_01_01_00_00_00.000000001/RECAC_SSH_PRIVATE_KEY");
    std::fs::set_permissions(&stamp, std::fs::Permissions::from_mode(0o640)).unwrap();
    let home = f.root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "the_whole_run_works_over_ssh_and_keeps_the_key_from_commands",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, f.root.path())
        .env("RECAC_TEST_REPO_URL", f.url())
        .env("RECAC_TEST_BARE", &f.bare)
        .env("RECAC_SECRETS_DIR", &secrets)
        .env("RECAC_SSH_KNOWN_HOSTS", &f.known_hosts)
        .env("RECAC_GIT_CREDENTIAL_HOSTS", f.server.host())
        .env("HOME", &home)
        .env_remove("GIT_SSH_COMMAND")
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the run in a child process:\n{stdout}\n{}\nsshd:\n{}",
        String::from_utf8_lossy(&out.stderr),
        f.server.log_text()
    );
}

fn child_run() {
    let root = PathBuf::from(std::env::var_os(CHILD).unwrap());
    let var = |name: &str| std::env::var(name).unwrap();
    let env_file = root.join("engine-env.txt");
    let test_env_file = root.join("test-env.txt");
    let script = format!(
        "env > '{}'; printf 'value = 2\\n' > value.txt",
        env_file.display()
    );
    let args = serde_json::to_string(&["-c", script.as_str()]).unwrap();
    let test_command = format!(
        "env > '{}'; grep -q 'value = 2' value.txt",
        test_env_file.display()
    );
    let (repo, secrets, known, scopes) = (
        var("RECAC_TEST_REPO_URL"),
        var("RECAC_SECRETS_DIR"),
        var("RECAC_SSH_KNOWN_HOSTS"),
        var("RECAC_GIT_CREDENTIAL_HOSTS"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ran = runtime.block_on(run_with(
        &root,
        &[
            ("RECAC_REPO_URL", repo.as_str()),
            ("RECAC_PROMPT", "Set the value to 2."),
            ("RECAC_TICKET", "SSH-2"),
            ("RECAC_AGENT_COMMAND", "sh"),
            ("RECAC_AGENT_ARGS", args.as_str()),
            ("RECAC_TEST_COMMAND", test_command.as_str()),
            ("RECAC_SECRETS_DIR", secrets.as_str()),
            ("RECAC_SSH_KNOWN_HOSTS", known.as_str()),
            ("RECAC_GIT_CREDENTIAL_HOSTS", scopes.as_str()),
            ("RECAC_PULL_REQUEST", "false"),
        ],
    ));
    let key_file = std::fs::read_dir(&secrets)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("RECAC_SSH_PRIVATE_KEY"))
        .find(|p| p.exists())
        .unwrap();
    let key = std::fs::read_to_string(key_file).unwrap();
    let key_line = key.lines().nth(1).unwrap().to_string();
    assert_eq!(
        ran.out.result.outcome,
        Outcome::Succeeded,
        "{:?}\n{}",
        ran.out.result,
        ran.logs
    );
    assert_eq!(ran.out.result.tests_passed, Some(true));
    let bare = PathBuf::from(var("RECAC_TEST_BARE"));
    assert_eq!(
        remote_head(&bare, "recac/SSH-2"),
        ran.out.result.commit.clone()
    );
    assert_eq!(show(&bare, "recac/SSH-2", "value.txt"), "value = 2");
    for file in [&env_file, &test_env_file] {
        let env = std::fs::read_to_string(file).unwrap();
        for withheld in ["GIT_SSH_COMMAND", "RECAC_SSH_PRIVATE_KEY", &key_line] {
            assert!(
                !env.contains(withheld),
                "{} holds {withheld}",
                file.display()
            );
        }
    }
    assert!(!ran.logs.contains(&key_line), "{}", ran.logs);
}
