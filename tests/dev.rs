//! `recac dev`: the whole loop on one machine, run as a user runs it (the `recac` binary),
//! and its answers to bad input.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use recac_gitserver::git;
use recac_tests::{recac_binary, repo_root};

/// The built-in dev configuration with its ports moved to `base`..`base + 4` (Jira
/// simulator, admin, -, git server, demo model), so tests do not collide with a
/// developer's `make dev` or with each other.
fn config_on_ports(dir: &Path, base: u16) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("config/dev/config.yaml"))
        .expect("config/dev/config.yaml");
    let moved = (0..5u16).fold(text, |text, i| {
        text.replace(&format!("1808{i}"), &(base + i).to_string())
    });
    let path = dir.join(format!("dev-{base}.yaml"));
    std::fs::write(&path, moved).expect("config written");
    path
}

fn dev(config: &Path, state: &Path, git_port: u16, extra: &[&str]) -> Command {
    let mut command = Command::new(recac_binary());
    command
        .arg("dev")
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(["--git-port", &git_port.to_string()])
        .args(extra)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("JIRA_URL");
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Processes whose command line mentions `needle` (e.g. a state folder).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if line.contains(needle) {
            found.push(format!("{}: {line}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn once_runs_every_demo_ticket_to_its_comment_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_on_ports(dir.path(), 28080);
    let state = dir.path().join("state");
    let output = dev(
        &config,
        &state,
        28083,
        &["--once", "--timeout", "300", "--keep"],
    )
    .output()
    .expect("recac dev runs");
    let all = text(&output);
    assert!(output.status.success(), "recac dev --once failed:\n{all}");
    for expected in [
        "result: DEMO-1: jira In Review, task demo-1-r1, phase Succeeded, attempt 1, job demo-1-r1-a1, branch recac/DEMO-1, comment succeeded/1",
        "result: DEMO-2: jira In Review, task demo-2-r1, phase Succeeded, attempt 2, job demo-2-r1-a2, branch recac/DEMO-2, comment succeeded/2",
        "result: DEMO-3: jira To Do, task -, phase -, attempt -, job -, branch -, comment needs repository",
        "model: the DEMO model",
        "export KUBECONFIG=",
        "get at -n recac-demo -w",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }

    // The agents pushed real commits over HTTPS: the retry fixed the first attempt.
    let repository = state.join("git/demo.git");
    let history = git(&repository, &["log", "--format=%s", "recac/DEMO-2"]).expect("git log");
    let subjects: Vec<&str> = history.lines().collect();
    assert_eq!(
        subjects[..2],
        [
            "DEMO-2: [demo model] wrote \"Goodbye, and thanks for all the fish!\" to greetings/goodbye.txt",
            "DEMO-2: [demo model] wrote \"Goodbye, and thanks for all the fish\" to greetings/goodbye.txt",
        ],
        "{history}"
    );
    assert_eq!(
        git(&repository, &["show", "recac/DEMO-1:greetings/ada.txt"]).expect("git show"),
        "Hello, Ada!"
    );
    assert!(state.join("kept").is_file(), "--keep keeps the state");
    assert!(state.join("logs/operator-1.log").is_file());
    assert!(state.join("control-plane/kube-apiserver.log").is_file());
    let left = processes_mentioning(&state.display().to_string());
    assert!(left.is_empty(), "still running after exit: {left:?}");
}

#[test]
fn a_port_in_use_is_named_with_the_fix_before_anything_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_on_ports(dir.path(), 28180);
    let _taken = TcpListener::bind("127.0.0.1:28180").expect("the test takes the port");
    let state = dir.path().join("state");
    let output = dev(&config, &state, 28183, &["--once"])
        .output()
        .expect("recac dev runs");
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("the Jira simulator cannot listen on 127.0.0.1:28180")
            && all.contains("--config"),
        "{all}"
    );
    assert!(!state.exists(), "nothing was started or written");
}

#[test]
fn a_stale_state_folder_is_cleaned_and_a_live_one_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A wrong key stops the run right after the state folder is claimed.
    let config = config_on_ports(dir.path(), 28280);
    let broken = dir.path().join("broken.yaml");
    let text_of_config = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &broken,
        text_of_config.replace("maxConcurrentTasks: 4", "maxConcurrentTask: 4"),
    )
    .expect("written");

    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("control-plane")).expect("stale content");
    std::fs::write(state.join("owner"), "4194999\n").expect("owner of a dead run");
    let output = dev(&broken, &state, 28283, &[])
        .output()
        .expect("recac dev runs");
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("did not stop cleanly"), "{all}");
    assert!(all.contains("taskController.maxConcurrentTask"), "{all}");
    assert!(!state.exists(), "the folder of the failed run is removed");

    // A folder owned by a live `recac dev` is left alone.
    std::fs::create_dir_all(&state).expect("state");
    let mut owner = Command::new("sh")
        .args(["-c", "sleep 30", "recac", "dev"])
        .spawn()
        .expect("a stand-in owner");
    std::fs::write(state.join("owner"), format!("{}\n", owner.id())).expect("owner");
    let output = dev(&config, &state, 28283, &[])
        .output()
        .expect("recac dev runs");
    let _ = owner.kill();
    let _ = owner.wait();
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("in use by another `recac dev`") && all.contains("--state-dir"),
        "{all}"
    );
    assert!(
        state.join("owner").is_file(),
        "the other run's folder stays"
    );
}

#[test]
fn missing_go_and_a_part_that_fails_to_start_are_explained_and_nothing_is_left() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_on_ports(dir.path(), 28380);
    let state = dir.path().join("state");
    let empty = dir.path().join("no-binaries");
    std::fs::create_dir_all(&empty).expect("folder");

    // No control-plane binaries and no Go on PATH.
    let output = dev(&config, &state, 28383, &[])
        .env("KUBEBUILDER_ASSETS", &empty)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("recac dev runs");
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("Go is not installed") && all.contains("go.dev"),
        "{all}"
    );
    assert!(!state.exists());

    // etcd that dies at once: the error names it with its log, and nothing keeps running.
    let broken = dir.path().join("broken-binaries");
    std::fs::create_dir_all(&broken).expect("folder");
    for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        let path = broken.join(name);
        std::fs::write(
            &path,
            "#!/bin/sh\necho \"$0: this build is broken\"\nexit 3\n",
        )
        .expect("script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("mode");
    }
    let output = dev(&config, &state, 28383, &[])
        .env("KUBEBUILDER_ASSETS", &broken)
        .output()
        .expect("recac dev runs");
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("the control plane did not start") && all.contains("this build is broken"),
        "{all}"
    );
    assert!(!state.exists(), "the state of the failed run is removed");
    let left = processes_mentioning(&state.display().to_string());
    assert!(left.is_empty(), "still running: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jira_url_drives_the_loop_from_another_jira() {
    use recac_jira_sim::{IssueSeed, JiraSim, ProjectDef, Seed};

    // A Jira that `recac dev` did not start and does not seed: a simulator run here.
    let jira = JiraSim::bind(
        "127.0.0.1:0".parse().expect("address"),
        Seed {
            projects: vec![ProjectDef {
                key: "DEMO".into(),
                name: None,
            }],
            ..Seed::default()
        },
    )
    .await
    .expect("a Jira");
    let (ticket, _) = recac_dev::demo::tickets("https://127.0.0.1:28583/demo.git")
        .into_iter()
        .next()
        .expect("a demo ticket");
    let key = jira.add_issue(IssueSeed { ..ticket });

    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_on_ports(dir.path(), 28580);
    let state = dir.path().join("state");
    let mut command = dev(&config, &state, 28583, &["--once", "--timeout", "300"]);
    command
        .arg("--jira-url")
        .arg(jira.url())
        .env("JIRA_EMAIL", recac_jira_sim::BOT_EMAIL)
        .env("JIRA_API_TOKEN", recac_jira_sim::BOT_TOKEN);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .expect("recac dev runs");
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(
        all.contains(&format!("Jira: {}", jira.url())) && !all.contains("Jira simulator:"),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "result: {key}: jira -, task demo-1-r1, phase Succeeded"
        )),
        "{all}"
    );
    let issue = jira.issue(&key).expect("the ticket");
    assert_eq!(issue.status, "In Review", "the configured transition");
    // The "picked up" comment comes only when the agent was seen running; the demo agent
    // may finish before that, so only the outcome's comment is certain.
    assert!(!issue.comments.is_empty(), "the succeeded comment");
}

/// A running `recac dev` whose output lines arrive on a channel.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Self {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("recac dev starts");
        let (tx, lines) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no {needle:?} within {within:?}:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits for the exit and returns the status with every line printed.
    fn exit(mut self, within: std::time::Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                std::thread::sleep(std::time::Duration::from_millis(200));
                self.seen.extend(self.lines.try_iter());
                return (status, self.seen.join("\n"));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "recac dev did not exit within {within:?}:\n{}",
                self.seen.join("\n")
            );
            self.seen.extend(self.lines.try_iter());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[test]
fn ctrl_c_and_sigterm_stop_everything_and_a_dead_operator_is_named_with_its_log() {
    let seconds = std::time::Duration::from_secs;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_on_ports(dir.path(), 28680);

    // Ctrl-C (SIGINT) and SIGTERM: a clean stop, the state folder removed, nothing left.
    for (name, said) in [
        ("INT", "recac dev: interrupted"),
        ("TERM", "recac dev: terminated"),
    ] {
        let state = dir.path().join(format!("state-{name}"));
        let mut run = Running::start(dev(&config, &state, 28683, &[]));
        run.wait_for("running; Ctrl-C stops everything", seconds(120));
        signal(run.child.id(), name);
        let (status, all) = run.exit(seconds(60));
        assert!(status.success(), "{all}");
        assert!(all.contains(said) && all.contains("stopping"), "{all}");
        assert!(!state.exists(), "the state folder is removed");
        let left = processes_mentioning(&state.display().to_string());
        assert!(left.is_empty(), "still running: {left:?}");
    }

    // An operator that dies: recac dev names it, shows its log, stops the rest, fails.
    let state = dir.path().join("state-dies");
    let mut run = Running::start(dev(&config, &state, 28683, &[]));
    run.wait_for("DEMO-1: jira In Progress", seconds(120));
    let needle = format!("{}/config.yaml", state.display());
    let operator: u32 = processes_mentioning(&needle)
        .iter()
        .find(|p| p.contains("--admin-address 127.0.0.1:28682"))
        .and_then(|p| p.split(':').next()?.parse().ok())
        .expect("operator replica 2 runs");
    signal(operator, "KILL");
    let (status, all) = run.exit(seconds(60));
    assert!(!status.success(), "{all}");
    assert!(
        all.contains("operator replica 2 stopped unexpectedly")
            && all.contains("logs/operator-2.log")
            && all.contains("recac_runtime"),
        "{all}"
    );
    let left = processes_mentioning(&state.display().to_string());
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
fn absent_control_plane_binaries_are_built_first_with_visible_progress() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_on_ports(dir.path(), 28780);
    let state = dir.path().join("state");
    // A checkout whose hack/envtest.sh stands in for the real build: it reports progress
    // on stderr and leaves binaries (that fail at once) in the cache folder.
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("hack")).expect("hack/");
    std::fs::write(
        checkout.join("hack/envtest.sh"),
        "#!/bin/sh\nbin=\"$RECAC_ENVTEST_DIR/k8s-v1.37.2-etcd-v3.6.16/bin\"\n\
         echo 'envtest: building Kubernetes (stand-in)' >&2\nmkdir -p \"$bin\"\n\
         for b in etcd kube-apiserver kube-controller-manager; do\n\
           printf '#!/bin/sh\\necho stand-in binary\\nexit 3\\n' > \"$bin/$b\"; chmod +x \"$bin/$b\"\n\
         done\necho \"$bin\"\n",
    )
    .expect("script");
    let cache = dir.path().join("envtest-cache");
    let output = dev(&config, &state, 28783, &[])
        .current_dir(&checkout)
        .env_remove("KUBEBUILDER_ASSETS")
        .env("RECAC_ENVTEST_DIR", &cache)
        .output()
        .expect("recac dev runs");
    let all = text(&output);
    assert!(
        all.contains("building the control plane's binaries with hack/envtest.sh")
            && all.contains("envtest: building Kubernetes (stand-in)"),
        "{all}"
    );
    assert!(
        cache
            .join("k8s-v1.37.2-etcd-v3.6.16/bin/kube-apiserver")
            .is_file()
    );
    assert!(
        all.contains("the control plane did not start") && all.contains("stand-in binary"),
        "the built binaries were used: {all}"
    );
    assert!(!output.status.success());
    assert!(!state.exists());
}
