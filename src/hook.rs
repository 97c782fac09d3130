//! The config's `hook`: one program run per outcome (`outcome::Outcome`),
//! after the command is done and the state lock is released.
//!
//! It is executed directly (no shell), with the outcome in its environment,
//! stdin from /dev/null, stdout to /dev/null and stderr read by the tool (the
//! first line of it is logged when the hook fails), so nothing it prints or
//! leaves running holds udev's pipes. It runs in a process group of its own
//! and gets what is left of the invocation's budget: at the deadline the
//! group is killed and not waited for; outcomes left after the deadline run
//! no hook. Whatever the hook does is logged and never changes the outcome or
//! the exit code.

use crate::deadline::Deadline;
use crate::outcome::Outcome;
use crate::root::Root;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// A PATH for the hook when the tool has none (udev's RUN environment).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of the hook's stderr is kept for the log.
const STDERR_CAP: usize = 4096;

/// Run `argv` once for each outcome, in order, within `deadline`. The
/// program (`argv[0]`, absolute) is looked up under `root`.
pub(crate) fn run_all(root: &Root, argv: &[String], outcomes: &[Outcome], deadline: &Deadline) {
    for o in outcomes {
        run(root, argv, o, deadline);
    }
}

fn run(root: &Root, argv: &[String], o: &Outcome, deadline: &Deadline) {
    let Some((prog, args)) = argv.split_first() else { return };
    let Ok(left) = deadline.remaining("") else {
        log::warn!("hook {prog} not run for \"{o}\": the time budget is used up");
        return;
    };
    let end = std::time::Instant::now() + left;
    let mut c = Command::new(root.path(prog));
    c.args(args)
        .envs(o.env())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own group: killed at the deadline with whatever it started.
        .process_group(0);
    if std::env::var_os("PATH").is_none() {
        c.env("PATH", DEFAULT_PATH);
    }
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => {
            log::warn!("hook {prog} for \"{o}\": cannot run it: {e}");
            return;
        }
    };
    let mut err = child.stderr.take();
    if let Some(e) = &err {
        use std::os::fd::AsRawFd;
        let nonblock = nix::fcntl::fcntl(e.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
        if nonblock.is_err() {
            err = None; // never block on it: the hook's stderr is then dropped
        }
    }
    let mut kept = Vec::new();
    loop {
        drain(err.as_mut(), &mut kept);
        match child.try_wait() {
            Ok(Some(status)) => {
                drain(err.as_mut(), &mut kept);
                let said = String::from_utf8_lossy(&kept);
                let said = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                if status.success() {
                    log::debug!("hook {prog} for \"{o}\": done");
                } else if said.is_empty() {
                    log::warn!("hook {prog} for \"{o}\" failed: {status}");
                } else {
                    log::warn!("hook {prog} for \"{o}\" failed: {status}: {said}");
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!("hook {prog} for \"{o}\": cannot wait for it: {e}");
                return;
            }
        }
        if std::time::Instant::now() >= end {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            log::warn!(
                "hook {prog} for \"{o}\" killed: still running when the time budget ran out ({:.1} s)",
                deadline.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(crate::timing::poll().min(end.saturating_duration_since(std::time::Instant::now())));
    }
}

/// Read what the hook's stderr has now, keeping the first `STDERR_CAP` bytes.
fn drain(err: Option<&mut std::process::ChildStderr>, kept: &mut Vec<u8>) {
    let Some(err) = err else { return };
    let mut buf = [0u8; 1024];
    // Nonblocking: WouldBlock (nothing now), 0 (closed) and errors end it.
    while let Ok(n @ 1..) = err.read(&mut buf) {
        let room = STDERR_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}
