//! libxl's per-domain lock files, taken the way libxl takes them, so the tool
//! and `xl` never talk to a domain's QEMU or change its device records at the
//! same time.
//!
//! libxl (tools/libs/light/libxl_internal.c, `libxl__ev_slowlock_*` and
//! `libxl__lock_file`) locks `/var/lib/xen/userdata-l.<domid>.<uuid>.<name>`:
//! open(O_RDWR|O_CREAT, 0666); flock(LOCK_EX); then fstat(fd) must match
//! stat(path) (same st_dev and st_ino) -- else the holder before us unlinked
//! the file after we opened it, so close and start again. Release: unlink
//! the path, flock(LOCK_UN), close; unlinking first means a waiter that then
//! gets the old inode sees the mismatch and retries instead of sharing it.
//! libxl waits forever; we poll LOCK_NB until the invocation's deadline.
//!
//! The names (libxl_internal.c): `qmp-socket-lock` (held by every libxl QMP
//! connection, libxl_qmp.c `qmp_ev_connect`, from before connect() until the
//! socket is closed), `libxl-device-changes-lock` (libxl's "devlock"), and
//! `domain-userdata-lock` (`libxl__lock_domain_userdata`, the lock libxl_usb.c
//! holds while it writes a usbctrl's or usbdev's xenstore records together
//! with the domain's saved JSON config).

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::root::Root;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// libxl's XEN_LIB_DIR on Debian and upstream's default.
#[cfg(test)]
const XEN_LIB_DIR: &str = crate::config::DEFAULT_XEN_LIB_DIR;

/// Which of libxl's locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Around every QMP connection to `qmp-libxl-<domid>`.
    Qmp,
    /// Around libxl's device records + saved domain config ("domain-userdata-lock").
    DomainUserdata,
}

impl Kind {
    pub fn userid(self) -> &'static str {
        match self {
            Kind::Qmp => "qmp-socket-lock",
            Kind::DomainUserdata => "domain-userdata-lock",
        }
    }
}

/// libxl__userdata_path(domid, userid, "l"): `<XEN_LIB_DIR>/userdata-l.<domid>.<uuid>.<userid>`,
/// resolved under `root`. `uuid` is the domain's, as in `/local/domain/<domid>/vm` = `/vm/<uuid>`.
pub fn path(root: &Root, lib_dir: &Path, domid: u32, uuid: &str, kind: Kind) -> Result<PathBuf> {
    let ok =
        uuid.len() == 36
            && uuid.bytes().enumerate().all(|(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == b'-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
    if !ok {
        return Err(Error::new(format!("domain {domid}: bad uuid {uuid:?}")));
    }
    Ok(root.path(lib_dir.join(format!("userdata-l.{domid}.{uuid}.{}", kind.userid()))))
}

/// A held libxl lock. Dropping it releases it the way libxl does.
#[derive(Debug)]
pub struct XenLock {
    path: PathBuf,
    lock: Option<Flock<File>>,
}

/// How long to sleep between LOCK_NB attempts: libxl holds these locks for
/// one QMP command or one xenstore transaction (milliseconds).
const POLL: Duration = Duration::from_millis(5);

impl XenLock {
    /// Take the lock at `path`, waiting at most until the deadline.
    pub fn acquire(path: &Path, deadline: &Deadline) -> Result<XenLock> {
        let what = || format!("waiting for libxl's lock {}", path.display());
        loop {
            // O_NOFOLLOW: never through a symlink; libxl's mode 0666 (minus umask).
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o666)
                .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| Error::caused(format!("cannot open libxl's lock {}", path.display()), e))?;
            let mut file = file;
            let lock = loop {
                match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(l) => break l,
                    Err((f, nix::errno::Errno::EWOULDBLOCK)) | Err((f, nix::errno::Errno::EINTR)) => {
                        file = f;
                        let left = deadline.remaining(&what())?;
                        std::thread::sleep(left.min(POLL));
                    }
                    Err((_, e)) => return Err(Error::new(format!("cannot lock {}: {}", path.display(), e.desc()))),
                }
            };
            let held = lock.metadata().map_err(|e| Error::caused(format!("cannot fstat {}", path.display()), e))?;
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => {
                    return Ok(XenLock { path: path.to_path_buf(), lock: Some(lock) })
                }
                // The previous holder unlinked it (and maybe someone made a new
                // one) after we opened it: our inode is no lock. Start again.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::caused(format!("cannot stat {}", path.display()), e)),
            }
            drop(lock); // unlock + close, without unlinking: the path is not ours
            deadline.remaining(&what())?;
        }
    }
}

impl Drop for XenLock {
    fn drop(&mut self) {
        // libxl's order: unlink while still holding the lock, then unlock, then close.
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove libxl's lock {}: {e}", self.path.display());
        }
        if let Some(lock) = self.lock.take() {
            match lock.unlock() {
                Ok(file) => drop(file),
                Err((lock, e)) => {
                    log::warn!("cannot unlock {}: {}", self.path.display(), e.desc());
                    drop(lock); // closing releases it anyway
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aua-xenlock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const UUID: &str = "6e0f4c3a-1b2d-4e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn paths_are_libxls() {
        let r = Root::new("/tmp/r");
        assert_eq!(
            path(&r, Path::new(XEN_LIB_DIR), 7, UUID, Kind::Qmp).unwrap(),
            PathBuf::from(format!("/tmp/r/var/lib/xen/userdata-l.7.{UUID}.qmp-socket-lock"))
        );
        assert!(path(&r, Path::new(XEN_LIB_DIR), 7, UUID, Kind::DomainUserdata)
            .unwrap()
            .ends_with(format!("userdata-l.7.{UUID}.domain-userdata-lock")));
        for bad in
            ["", "../../etc/passwd", "6e0f4c3a-1b2d-4e5f-8a9b-0c1d2e3f4a5", "6e0f4c3a/1b2d-4e5f-8a9b-0c1d2e3f4a5b"]
        {
            let e = path(&r, Path::new(XEN_LIB_DIR), 7, bad, Kind::Qmp).unwrap_err().to_string();
            assert!(e.contains("bad uuid"), "{e}");
        }
    }

    #[test]
    fn acquire_creates_and_release_unlinks() {
        let d = tmpdir("basic");
        let p = d.join("userdata-l.1.x.qmp-socket-lock");
        let g = XenLock::acquire(&p, &Deadline::after(Duration::from_secs(2))).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        // 0666 as libxl asks, less the process umask (never more).
        assert_eq!(m.permissions().mode() & !0o666 & 0o7777, 0);
        drop(g);
        assert!(!p.exists(), "released lock file still exists");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn contention_from_another_fd_waits_then_times_out() {
        let d = tmpdir("busy");
        let p = d.join("lock");
        // A second holder, as libxl would be: its own open file description.
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).unwrap();
        let other = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
        let t = std::time::Instant::now();
        let e = XenLock::acquire(&p, &Deadline::after(Duration::from_millis(60))).unwrap_err().to_string();
        assert!(e.contains("timed out waiting for libxl's lock"), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(60), "gave up early: {:?}", t.elapsed());
        assert!(p.exists(), "a waiter that timed out must not unlink the holder's file");
        drop(other);
        let g = XenLock::acquire(&p, &Deadline::after(Duration::from_secs(2))).unwrap();
        drop(g);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn holder_releasing_like_libxl_hands_over_a_fresh_inode() {
        // The race libxl's stat/fstat check exists for: we open the file, the
        // holder unlinks it and unlocks; we then lock the orphaned inode, must
        // notice, and retry on a new file at the path.
        let d = tmpdir("handover");
        let p = d.join("lock");
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).unwrap();
        let holder = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
        let p2 = p.clone();
        let waiter =
            std::thread::spawn(move || XenLock::acquire(&p2, &Deadline::after(Duration::from_secs(5))).unwrap());
        // Let the waiter open the old inode and start polling (bounded: it
        // can only finish after we release).
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::remove_file(&p).unwrap();
        drop(holder);
        let g = waiter.join().unwrap();
        // What the path names now is locked by the waiter (not an orphan it kept).
        let f = OpenOptions::new().read(true).open(&p).expect("the waiter's lock file is at the path");
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Err((_, e)) => assert_eq!(e, nix::errno::Errno::EWOULDBLOCK),
            Ok(_) => panic!("the file at the path is not locked: the waiter locked the unlinked inode"),
        }
        drop(g);
        assert!(!p.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_a_symlink() {
        let d = tmpdir("symlink");
        let target = d.join("target");
        std::fs::write(&target, b"").unwrap();
        let p = d.join("lock");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = XenLock::acquire(&p, &Deadline::after(Duration::from_millis(200))).unwrap_err().to_string();
        assert!(e.contains("cannot open libxl's lock"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
