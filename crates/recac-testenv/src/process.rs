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
    pids: HashMap<u32, String>,
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
    let pids: Vec<u32> = registry.pids.keys().copied().collect();
    for pid in &pids {
        signal(*pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid in &pids {
        while Instant::now() < deadline && alive(*pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(*pid, libc::SIGKILL);
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
}

impl ManagedProcess {
    /// Spawns `program args...` with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_path: &Path) -> Result<Self> {
        let log = File::create(log_path).map_err(|source| TestEnvError::Io {
            path: log_path.display().to_string(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| TestEnvError::Io {
            path: log_path.display().to_string(),
            source,
        })?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // SAFETY: prctl is async-signal-safe and runs in the child before exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
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
            registry.pids.insert(child.id(), name.to_string());
        }
        Ok(Self {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
        })
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
        let pid = self.child.id();
        if self.child.try_wait().ok().flatten().is_none() {
            signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
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
