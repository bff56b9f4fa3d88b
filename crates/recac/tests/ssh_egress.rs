//! git over ssh behind the egress proxy, with a real OpenSSH server and `recac egress-proxy`
//! on loopback: ssh reaches the server through a `CONNECT` tunnel (`recac egress-connect` as
//! its ProxyCommand) when the allow-list has it, and is refused, with the refusal counted,
//! when it does not. Skipped (saying so) where no sshd is installed, as the agent's ssh tests.

#[path = "../../recac-agent/tests/support/sshd.rs"]
mod sshd;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recac_agent::egress::{blocked_by_proxy, ssh_proxy_command};
use recac_agent::git::{Git, SshKey, SshSettings};
use recac_agent::redact::Redactor;
use recac_api::repo_host::HostScope;
use sshd::Sshd;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bare_repo(root: &Path) -> PathBuf {
    let bare = root.join("r.git");
    let seed = root.join("seed");
    for dir in [&bare, &seed] {
        std::fs::create_dir_all(dir).expect("folder");
    }
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    );
    git(&seed, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(seed.join("value.txt"), "value = 1\n").expect("write");
    git(&seed, &["add", "-A"]);
    git(
        &seed,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "--quiet",
            "-m",
            "initial",
        ],
    );
    git(
        &seed,
        &["push", "--quiet", bare.to_str().expect("utf-8"), "main"],
    );
    bare
}

/// `recac egress-proxy` allowing `allow` to every client; killed on drop.
struct Proxy {
    child: Child,
    url: String,
}

impl Proxy {
    fn start(allow: &str) -> Proxy {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
            listener.local_addr().expect("address").port()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_recac"))
            .args([
                "egress-proxy",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--allow",
                allow,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the proxy starts");
        let ready = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < ready, "the proxy did not listen in 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Proxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(server: &Sshd, known_hosts: &Path, proxy: &Proxy) -> SshSettings {
    SshSettings {
        known_hosts: Some(known_hosts.to_path_buf()),
        private_key: Some(SshKey::new(&server.client_key)),
        key_scopes: HostScope::parse_list(&server.host()).expect("scope"),
        proxy_command: Some(ssh_proxy_command(
            Path::new(env!("CARGO_BIN_EXE_recac")),
            &proxy.url,
        )),
    }
}

#[tokio::test]
async fn git_over_ssh_goes_through_the_egress_proxy_and_only_where_allowed() {
    let root = tempfile::tempdir().expect("temp dir");
    let Some(server) = Sshd::start(&root.path().join("sshd")) else {
        return;
    };
    let bare = bare_repo(root.path());
    let known_hosts = root.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", server.known_hosts_line)).expect("write");
    let redactor = || Redactor::new(vec![server.client_key.trim().to_string()]);

    let allowing = Proxy::start(&format!("127.0.0.1:{}", server.port));
    let through = Git::new(
        &root.path().join("through"),
        None,
        None,
        &settings(&server, &known_hosts, &allowing),
        redactor(),
    )
    .expect("git");
    through
        .clone_repo(&server.url(&bare))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    assert_eq!(
        std::fs::read_to_string(through.dir().join("value.txt")).expect("cloned"),
        "value = 1\n"
    );
    assert!(
        blocked_by_proxy(&allowing.url)
            .expect("the list")
            .is_empty(),
        "nothing refused"
    );

    let refusing = Proxy::start("github.com:22");
    let refused = Git::new(
        &root.path().join("refused"),
        None,
        None,
        &settings(&server, &known_hosts, &refusing),
        redactor(),
    )
    .expect("git");
    let error = refused
        .clone_repo(&server.url(&bare))
        .await
        .expect_err("the proxy refuses the server")
        .to_string();
    let blocked = blocked_by_proxy(&refusing.url).expect("the list");
    assert_eq!(blocked.len(), 1, "{blocked:?} ({error})");
    assert_eq!(
        (blocked[0].host.as_str(), blocked[0].port),
        ("127.0.0.1", server.port)
    );
}
