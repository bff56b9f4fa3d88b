//! A real OpenSSH server on loopback for the SSH tests: a throw-away host key, one authorised
//! client key, and the user running the tests as the login (git runs `git-upload-pack` and
//! `git-receive-pack` through that user's shell, as on any git host reached over ssh).
//!
//! [`Sshd::start`] returns `None` (and says so on stderr) when no `sshd` is installed
//! (Debian: `apt-get install openssh-server`); a server that is installed but does not start
//! fails the test with its log.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd; stopped on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The login name (the user running the tests).
    pub user: String,
    /// The authorised client key (OpenSSH private key text).
    pub client_key: String,
    /// The server's host key as a known_hosts line (`[127.0.0.1]:PORT ssh-ed25519 AAAA...`).
    pub known_hosts_line: String,
    /// Where the server's log goes.
    pub log: PathBuf,
}

fn find_sshd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("sshd"))
        .find(|p| p.is_file())
}

/// A new ed25519 key pair at `file` (and `file.pub`), without a passphrase.
pub fn keygen(file: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "recac-test", "-f"])
        .arg(file)
        .output()
        .expect("ssh-keygen runs");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `type base64` of a public key file.
pub fn public_key(file: &Path) -> String {
    let text = std::fs::read_to_string(file.with_extension("pub")).expect("public key");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Sshd {
    /// Starts a server on `127.0.0.1` with its files under `dir`.
    pub fn start(dir: &Path) -> Option<Self> {
        let Some(sshd) = find_sshd() else {
            // CI must run these tests: .ci/run installs openssh-server.
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "no sshd is installed (Debian: apt-get install openssh-server); CI runs the SSH tests"
            );
            eprintln!("SKIPPED: no sshd is installed (Debian: apt-get install openssh-server)");
            return None;
        };
        std::fs::create_dir_all(dir).unwrap();
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        keygen(&host_key);
        keygen(&client_key);
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, format!("{}\n", public_key(&client_key))).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nStrictModes no\nPubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nAllowAgentForwarding no\nAllowTcpForwarding no\nX11Forwarding no\nLogLevel VERBOSE\n",
                host_key.display(),
                dir.join("sshd.pid").display(),
                authorized.display(),
            ),
        )
        .unwrap();
        // Privilege separation needs its empty folder (a service start would make it).
        if whoami() == "root" {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let log = dir.join("sshd.log");
        let child = Command::new(&sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("sshd starts");
        let mut server = Self {
            child,
            port,
            user: whoami(),
            client_key: std::fs::read_to_string(&client_key).unwrap(),
            known_hosts_line: format!("[127.0.0.1]:{port} {}", public_key(&host_key)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("sshd exited ({status}):\n{}", server.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on 127.0.0.1:{port}:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// The `ssh://` URL of `path` on this server.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    /// `127.0.0.1:PORT`, the scope of its repositories.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
