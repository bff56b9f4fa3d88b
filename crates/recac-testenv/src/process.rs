//! Child processes that never outlive the test binary.
//!
//! Every child is spawned by one long-lived supervisor thread with
//! `PR_SET_PDEATHSIG`, so the kernel kills it when the test process dies, even
//! on SIGKILL. Children still running at a normal exit (a `static` is never
//! dropped) are stopped by an `atexit` hook, which also removes registered
//! temporary folders.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{Result, TestEnvError};

type SpawnReply = mpsc::Sender<std::io::Result<Child>>;

struct Registry {
    /// Each child's name and whether it leads a process group of its own (then the
    /// whole group is signalled).
    pids: HashMap<u32, (String, bool)>,
    folders: Vec<PathBuf>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        // SAFETY: `atexit` stores a plain function pointer; the function only uses
        // std and libc calls that are valid during exit.
        unsafe {
            libc::atexit(stop_everything_at_exit);
        }
        Mutex::new(Registry {
            pids: HashMap::new(),
            folders: Vec::new(),
        })
    })
}

extern "C" fn stop_everything_at_exit() {
    let Ok(mut registry) = registry().lock() else {
        return;
    };
    let pids: Vec<(u32, bool)> = registry.pids.iter().map(|(p, (_, g))| (*p, *g)).collect();
    for (pid, group) in &pids {
        signal_target(*pid, *group, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (pid, group) in &pids {
        while Instant::now() < deadline && alive(*pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_target(*pid, *group, libc::SIGKILL);
    }
    registry.pids.clear();
    for folder in registry.folders.drain(..) {
        let _ = std::fs::remove_dir_all(folder);
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: sending a signal to a child we spawned; no memory is touched.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Signals `pid`, or its whole process group when `group` (the child called
/// `setpgid(0, 0)`, so its group id is its pid).
fn signal_target(pid: u32, group: bool, sig: libc::c_int) {
    if group {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: signalling the process group led by a child we spawned.
            unsafe {
                libc::kill(-pid, sig);
            }
        }
    } else {
        signal(pid, sig);
    }
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    let mut status = 0;
    // SAFETY: reaps our own child if it has exited; WNOHANG never blocks.
    let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    reaped == 0
}

/// Registers a folder to be removed at exit (for state held in `static`s).
pub fn remove_at_exit(folder: &Path) {
    if let Ok(mut registry) = registry().lock() {
        registry.folders.push(folder.to_path_buf());
    }
}

/// Forgets a folder registered with [`remove_at_exit`] (it was removed already).
pub fn forget_folder(folder: &Path) {
    if let Ok(mut registry) = registry().lock() {
        registry.folders.retain(|f| f != folder);
    }
}

fn supervisor() -> &'static Mutex<mpsc::Sender<(Command, SpawnReply)>> {
    static SUPERVISOR: OnceLock<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceLock::new();
    SUPERVISOR.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("recac-testenv-supervisor".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static, so this thread (the parent the
                // kernel watches for PR_SET_PDEATHSIG) lives as long as the process.
                loop {
                    std::thread::park();
                }
            })
            .expect("the test supervisor thread starts");
        Mutex::new(tx)
    })
}

/// A child process with its output in a log file; stopped when dropped.
pub struct ManagedProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    group: bool,
    stopped: bool,
}

impl ManagedProcess {
    /// Spawns `program args...` with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_path: &Path) -> Result<Self> {
        let mut command = Command::new(program);
        command.args(args);
        Self::spawn_command(name, command, log_path, false)
    }

    /// Spawns a prepared `command` (program, arguments, environment and working
    /// folder already set) with stdin closed and stdout and stderr both written to
    /// `log_path`, through the supervisor thread so it dies with the test process.
    /// With `own_process_group` the child leads a new process group and every
    /// signal ([`ManagedProcess::stop`], [`ManagedProcess::signal`], the exit hook)
    /// goes to the whole group, so grandchildren (a shell's commands) stop too.
    pub fn spawn_command(
        name: &str,
        mut command: Command,
        log_path: &Path,
        own_process_group: bool,
    ) -> Result<Self> {
        let log = File::create(log_path).map_err(|source| TestEnvError::Io {
            path: log_path.display().to_string(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| TestEnvError::Io {
            path: log_path.display().to_string(),
            source,
        })?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // SAFETY: prctl and setpgid are async-signal-safe and run in the child before exec.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if own_process_group && libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (reply_tx, reply_rx) = mpsc::channel();
        let spawned = supervisor()
            .lock()
            .map_err(|_| TestEnvError::Other("test supervisor lock poisoned".into()))?
            .send((command, reply_tx));
        if spawned.is_err() {
            return Err(TestEnvError::Other("test supervisor thread is gone".into()));
        }
        let child = reply_rx
            .recv()
            .map_err(|_| TestEnvError::Other("test supervisor did not answer".into()))?
            .map_err(|source| TestEnvError::Spawn {
                name: name.to_string(),
                source,
            })?;
        if let Ok(mut registry) = registry().lock() {
            registry
                .pids
                .insert(child.id(), (name.to_string(), own_process_group));
        }
        Ok(Self {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
            group: own_process_group,
            stopped: false,
        })
    }

    /// The process id (also the process group id with `own_process_group`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process (or its process group) unless it exited already.
    pub fn signal(&mut self, sig: libc::c_int) {
        if !self.stopped && self.child.try_wait().ok().flatten().is_none() {
            signal_target(self.child.id(), self.group, sig);
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last `max` bytes of the process's output, for error messages.
    pub fn log_tail(&self, max: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// Whether the process exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the process to stop, then kills it after a grace period.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.child.id();
        if self.child.try_wait().ok().flatten().is_none() {
            signal_target(pid, self.group, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.group {
                signal_target(pid, true, libc::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        } else if self.group {
            // The leader exited; make sure nothing it started lingers.
            signal_target(pid, true, libc::SIGKILL);
        }
        if let Ok(mut registry) = registry().lock() {
            registry.pids.remove(&pid);
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
