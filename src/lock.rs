//! The exclusive lock around every read-modify-write of state and every QMP
//! conversation: udev runs events for different devices in parallel, and QEMU
//! serves one QMP client at a time anyway.
//!
//! `flock(2)` via `std::fs::File::try_lock`, polled until the invocation's
//! deadline; the guard owns the locked file and releases it on drop.

use crate::deadline::Deadline;
use crate::error::{Context, Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::time::Duration;

#[derive(Debug)]
pub struct LockGuard {
    file: File,
}

impl LockGuard {
    pub fn acquire(dir: &Path, deadline: &Deadline) -> Result<LockGuard> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create state dir {}", dir.display()))?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock {}", path.display()))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(LockGuard { file }),
                Err(TryLockError::WouldBlock) => {
                    let left = deadline.remaining(&format!(
                        "waiting for lock {} (another auto-usb-attach is running)",
                        path.display()
                    ))?;
                    std::thread::sleep(left.min(Duration::from_millis(5)));
                }
                Err(TryLockError::Error(e)) => return Err(Error::new(format!("cannot lock {}: {e}", path.display()))),
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the file releases the flock too; unlocking first is explicit.
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
