//! The exclusive lock around every read-modify-write of state and every QMP
//! conversation: udev runs events for different devices in parallel, and QEMU
//! serves one QMP client at a time anyway.
//!
//! `flock(2)` (non-blocking, through nix: std's File::lock needs Rust 1.89),
//! polled until the invocation's deadline; the guard owns the locked file
//! and releases it on drop.

use crate::deadline::Deadline;
use crate::error::{Context, Error, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::Path;

pub(crate) struct LockGuard {
    _file: Flock<File>,
    /// The verified state dir the lock is in: what the lock protects is
    /// read and written through it, without opening and checking it again.
    dir: crate::fsio::Dir,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

impl LockGuard {
    pub(crate) fn acquire(dir: &Path, deadline: &Deadline) -> Result<LockGuard> {
        // Created with an exact mode, opened through a verified dir fd and
        // never through a symlink (root must not create or chmod others' files).
        let d = crate::fsio::Dir::create(dir)?;
        let path = dir.join("lock");
        let mut file = d.open_rw("lock", crate::fsio::FILE_MODE).context("cannot open lock")?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => return Ok(LockGuard { _file: locked, dir: d }),
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => {
                    file = f;
                    let left = deadline.remaining(&format!(
                        "waiting for lock {} (another auto-usb-attach is running)",
                        path.display()
                    ))?;
                    std::thread::sleep(left.min(crate::timing::poll()));
                }
                Err((_, e)) => return Err(Error::caused(format!("cannot lock {}", path.display()), e)),
            }
        }
    }

    /// The lock if it is free now, else the dir back (never waits): an
    /// event that finds it held queues itself (`queue`) instead of waiting.
    pub(crate) fn try_acquire(d: crate::fsio::Dir) -> Result<std::result::Result<LockGuard, crate::fsio::Dir>> {
        let file = d.open_rw("lock", crate::fsio::FILE_MODE).context("cannot open lock")?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => Ok(Ok(LockGuard { _file: locked, dir: d })),
            Err((_, Errno::EWOULDBLOCK | Errno::EINTR)) => Ok(Err(d)),
            Err((_, e)) => Err(Error::caused(format!("cannot lock {}", d.shown("lock")), e)),
        }
    }

    pub(crate) fn dir(&self) -> &crate::fsio::Dir {
        &self.dir
    }

    /// Release the lock, keeping the dir (to look at the queue after).
    pub(crate) fn release(self) -> crate::fsio::Dir {
        self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn second_lock_waits_then_times_out() {
        let dir = std::env::temp_dir().join(format!("aua-lock-{}", std::process::id()));
        let d = Deadline::after(Duration::from_secs(5));
        let g = LockGuard::acquire(&dir, &d).unwrap();
        let short = Deadline::after(Duration::from_millis(30));
        let e = LockGuard::acquire(&dir, &short).unwrap_err().to_string();
        assert!(e.contains("timed out waiting for lock"), "{e}");
        drop(g);
        LockGuard::acquire(&dir, &Deadline::after(Duration::from_millis(200))).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
