//! Safe file I/O for a tool that runs as root next to directories other
//! users may reach: nothing is written through a symlink, every file read is
//! a regular file read up to a size cap (a FIFO or `/dev/zero` would block or
//! never end), and every mode is set explicitly, whatever the umask.
//!
//! Files in the state dir are opened relative to a verified directory fd
//! (`Dir`: `openat` with `O_NOFOLLOW|O_CLOEXEC`), so once the directory is
//! checked, no later path lookup can be redirected. `unsafe_path` is the one
//! rule for "could a non-root user write or replace this": the file or
//! directory itself and every parent, followed through symlinks.

use crate::error::{Error, Result};
use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The state dir's mode when we create it (also accepted: 0700, or anything
/// without group/other write).
pub const DIR_MODE: u32 = 0o755;
/// Files others may read (state.json: `list` runs as any user; the lock).
pub const FILE_MODE: u32 = 0o644;
/// Largest config or state file we read: both are a few kB in practice.
pub const READ_CAP: u64 = 1 << 20;

/// Why a read found no usable file: absent, or something that is not a
/// readable regular file within the cap (a directory, FIFO, device, symlink
/// where none is allowed, a huge file, an I/O error).
#[derive(Debug)]
pub enum ReadError {
    Missing,
    Unusable(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing => f.write_str("does not exist"),
            ReadError::Unusable(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ReadError {}

impl crate::error::Classify for ReadError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Failed
    }
}

fn kind_name(m: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// Reads an open file: must be regular and at most `cap` bytes.
fn read_open(f: File, cap: u64) -> Result<Vec<u8>, ReadError> {
    let m = f.metadata().map_err(|e| ReadError::Unusable(e.to_string()))?;
    if !m.file_type().is_file() {
        return Err(ReadError::Unusable(format!("is {}, not a regular file", kind_name(&m))));
    }
    if m.len() > cap {
        return Err(ReadError::Unusable(format!("is {} bytes (at most {cap} allowed)", m.len())));
    }
    let mut buf = Vec::with_capacity(m.len() as usize);
    // take(): a file that grows while we read still ends at the cap.
    f.take(cap + 1).read_to_end(&mut buf).map_err(|e| ReadError::Unusable(e.to_string()))?;
    if buf.len() as u64 > cap {
        return Err(ReadError::Unusable(format!("is more than {cap} bytes")));
    }
    Ok(buf)
}

fn open_err(e: rustix::io::Errno) -> ReadError {
    match e {
        rustix::io::Errno::NOENT => ReadError::Missing,
        rustix::io::Errno::LOOP => ReadError::Unusable("is a symlink (not followed)".into()),
        e => ReadError::Unusable(std::io::Error::from(e).to_string()),
    }
}

/// Reads a regular file by path (symlinks followed: a packaged config may be
/// one; `unsafe_path` vets where it leads). O_NONBLOCK so that opening a FIFO
/// returns at once; it is then refused as not regular.
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let fd = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(open_err)?;
    read_open(File::from(fd), cap)
}

/// Owner and mode rule shared by every check: owned by root or by us, and not
/// writable by group or others (`sticky_ok`: a sticky dir is fine as a parent,
/// since others cannot replace entries they do not own).
fn vet(m: &Metadata, sticky_ok: bool) -> Option<String> {
    static ME: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let mode = m.mode() & 0o7777;
    let me = *ME.get_or_init(|| nix::unistd::geteuid().as_raw());
    if m.uid() != 0 && m.uid() != me {
        Some(format!("owned by uid {} (mode {mode:04o})", m.uid()))
    } else if mode & 0o022 != 0 && !(sticky_ok && m.file_type().is_dir() && mode & 0o1000 != 0) {
        Some(format!("writable by group or others (mode {mode:04o})"))
    } else {
        None
    }
}

/// Why a non-root user could write or replace `path` (absolute, already under
/// the root), or None. Checks the entry itself (no sticky exception), and
/// every parent both as written and after resolving symlinks. A missing
/// entry is checked through its existing parents (it will be created there).
/// `no_symlink`: the entry itself must not be a symlink (the state dir).
pub fn unsafe_path(path: &Path, no_symlink: bool) -> Option<String> {
    unsafe_path_seen(path, no_symlink, &mut Vec::new())
}

/// `unsafe_path` for each of `paths` (path, no_symlink); a directory that
/// two of them share is looked at once. The first problem: which, and why.
pub fn unsafe_paths(paths: &[(&Path, bool)]) -> Option<(usize, String)> {
    let mut seen = Vec::new();
    paths.iter().enumerate().find_map(|(i, (p, no_link))| unsafe_path_seen(p, *no_link, &mut seen).map(|w| (i, w)))
}

/// `seen`: directories already found safe.
fn unsafe_path_seen(path: &Path, no_symlink: bool, seen: &mut Vec<PathBuf>) -> Option<String> {
    // Symlinks (or `..`) on the way mean the resolved path must be checked too.
    let mut resolve = path.components().any(|c| c == std::path::Component::ParentDir);
    match std::fs::symlink_metadata(path) {
        Ok(l) if l.file_type().is_symlink() && no_symlink => return Some("a symlink".into()),
        Ok(l) if l.file_type().is_symlink() => {
            resolve = true;
            if let Some(why) = std::fs::metadata(path).ok().and_then(|m| vet(&m, false)) {
                return Some(why);
            }
        }
        Ok(l) => {
            if let Some(why) = vet(&l, false) {
                return Some(why);
            }
        }
        Err(_) => {}
    }
    let written: Vec<PathBuf> = path.ancestors().skip(1).map(Path::to_path_buf).collect();
    if let Some(why) = vet_dirs(&written, &mut resolve, seen) {
        return Some(why);
    }
    if resolve {
        // Each directory once: without symlinks both lists are the same.
        if let Ok(real) = std::fs::canonicalize(path) {
            let real: Vec<PathBuf> = real.ancestors().skip(1).map(Path::to_path_buf).collect();
            return vet_dirs(&real, &mut false, seen);
        }
    }
    None
}

/// Vet each of `dirs` not in `seen` (following a symlink, and then setting
/// `symlinked`); the safe ones join `seen`.
fn vet_dirs(dirs: &[PathBuf], symlinked: &mut bool, seen: &mut Vec<PathBuf>) -> Option<String> {
    for d in dirs {
        if d.as_os_str().is_empty() || seen.contains(d) {
            continue;
        }
        let m = match std::fs::symlink_metadata(d) {
            Ok(l) if l.file_type().is_symlink() => {
                *symlinked = true;
                std::fs::metadata(d)
            }
            other => other,
        };
        let Ok(m) = m else { continue };
        if let Some(why) = vet(&m, true) {
            return Some(format!("in {} which is {why}", d.display()));
        }
        seen.push(d.clone());
    }
    None
}

/// A verified directory: opened without following a symlink, owned by root
/// or us, not writable by group or others. Files inside are reached only
/// through its fd.
#[derive(Debug)]
pub struct Dir {
    fd: File,
    path: PathBuf,
}

impl Dir {
    /// Opens `path`, creating it (and missing parents) first; a directory we
    /// create gets `DIR_MODE` exactly, whatever the umask.
    pub fn create(path: &Path) -> Result<Dir> {
        Dir::create_as(path, "state dir")
    }

    /// `create` for a directory that is not the state dir: errors call it `what`.
    pub fn create_as(path: &Path, what: &str) -> Result<Dir> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let mut b = std::fs::DirBuilder::new();
                b.recursive(true).mode(DIR_MODE);
                b.create(path).map_err(|e| Error::caused(format!("cannot create {what} {}", path.display()), e))?;
                let d = Dir::open_as(path, what)?;
                d.fd.set_permissions(std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(|e| Error::caused(format!("cannot set mode of {}", path.display()), e))?;
                Ok(d)
            }
            _ => Dir::open_as(path, what),
        }
    }

    /// Opens an existing directory and checks it.
    pub fn open(path: &Path) -> Result<Dir> {
        Dir::open_as(path, "state dir")
    }

    fn open_as(path: &Path, what: &str) -> Result<Dir> {
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            let why = match e {
                rustix::io::Errno::LOOP => "is a symlink".to_string(),
                rustix::io::Errno::NOTDIR => "is not a directory".to_string(),
                e => std::io::Error::from(e).to_string(),
            };
            Error::new(format!("{what} {}: {why}", path.display()))
        })?;
        let fd = File::from(fd);
        let m = fd.metadata().map_err(|e| Error::caused(format!("{what} {}", path.display()), e))?;
        if let Some(why) = vet(&m, false) {
            crate::bail!("refusing to run: {what} {} is {why}", path.display());
        }
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn shown(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    /// Reads regular file `name` (no symlink followed), up to `cap` bytes.
    pub fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>, ReadError> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(open_err)?;
        read_open(File::from(fd), cap)
    }

    /// Opens (creating) regular file `name` for writing without truncating,
    /// never through a symlink; its mode is set to `mode` exactly.
    pub fn open_rw(&self, name: &str, mode: u32) -> Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| Error::new(format!("cannot open {}: {}", self.shown(name), std::io::Error::from(e))))?;
        let f = File::from(fd);
        let m = f.metadata().map_err(|e| Error::caused(format!("cannot open {}", self.shown(name)), e))?;
        if !m.file_type().is_file() {
            crate::bail!("cannot open {}: is {}, not a regular file", self.shown(name), kind_name(&m));
        }
        if m.mode() & 0o7777 != mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::caused(format!("cannot set mode of {}", self.shown(name)), e))?;
        }
        Ok(f)
    }

    /// Atomic replace of `name`: a fresh temp file (O_EXCL, so never a
    /// symlink's target), fsync, renameat, fsync of the directory. A crash
    /// leaves the old file or the new one, whole.
    pub fn write_atomic(&self, name: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
        let tmp = format!(".{name}.tmp");
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, tmp.as_str(), flags, Mode::from_raw_mode(mode)) {
            // A temp file left by a killed run (or anything planted there).
            Err(rustix::io::Errno::EXIST) => {
                rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty())?;
                rustix::fs::openat(&self.fd, tmp.as_str(), flags, Mode::from_raw_mode(mode))?
            }
            r => r?,
        };
        let mut f = File::from(fd);
        let done = (|| {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.write_all(data)?;
            f.sync_all()?;
            rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
            self.fd.sync_all()
        })();
        if done.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        }
        done
    }

    /// Names in the directory that start with `prefix`, unsorted.
    pub fn names_with_prefix(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().to_str() {
                if name.starts_with(prefix) {
                    out.push(name.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Removes file `name`; one already gone is no error.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves `name` aside to `to` (or, if that is taken by something that
    /// cannot be replaced, `to.<pid>`); returns the name used.
    pub fn move_aside(&self, name: &str, to: &str) -> std::io::Result<String> {
        match rustix::fs::renameat(&self.fd, name, &self.fd, to) {
            Ok(()) => Ok(to.to_string()),
            Err(_) => {
                let alt = format!("{to}.{}", std::process::id());
                rustix::fs::renameat(&self.fd, name, &self.fd, alt.as_str())?;
                Ok(alt)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aua-fsio-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn writes_never_follow_symlinks() {
        let d = tmp("link");
        let victim = d.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let dir = Dir::open(&d).unwrap();
        symlink(&victim, d.join("state.json")).unwrap();
        symlink(&victim, d.join(".state.json.tmp")).unwrap();
        symlink(&victim, d.join("lock")).unwrap();
        dir.write_atomic("state.json", b"new", 0o644).unwrap();
        assert!(dir.open_rw("lock", 0o644).is_err());
        assert!(matches!(dir.read("lock", 10), Err(ReadError::Unusable(_))));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(d.join("state.json")).unwrap(), "new");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_refuse_fifo_device_dir_and_oversize() {
        let d = tmp("read");
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_regular(&d.join("fifo"), 100).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        assert!(read_regular(Path::new("/dev/zero"), 100).unwrap_err().to_string().contains("character device"));
        assert!(read_regular(&d, 100).unwrap_err().to_string().contains("directory"));
        std::fs::write(d.join("big"), vec![b'x'; 101]).unwrap();
        assert!(read_regular(&d.join("big"), 100).unwrap_err().to_string().contains("101 bytes"));
        assert!(matches!(read_regular(&d.join("none"), 100), Err(ReadError::Missing)));
        assert_eq!(read_regular(&d.join("big"), 101).unwrap().len(), 101);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn modes_are_exact_whatever_the_umask() {
        let d = tmp("mode");
        let dir = Dir::create(&d.join("s")).unwrap();
        assert_eq!(std::fs::metadata(dir.path()).unwrap().mode() & 0o7777, DIR_MODE);
        let f = dir.open_rw("lock", 0o644).unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(0o666)).unwrap();
        dir.open_rw("lock", 0o644).unwrap();
        assert_eq!(std::fs::metadata(d.join("s/lock")).unwrap().mode() & 0o7777, 0o644);
        dir.write_atomic("f", b"x", 0o600).unwrap();
        assert_eq!(std::fs::metadata(d.join("s/f")).unwrap().mode() & 0o7777, 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unsafe_paths_named_parents_included() {
        let d = tmp("perm");
        std::fs::create_dir(d.join("etc")).unwrap();
        std::fs::write(d.join("etc/c.toml"), "").unwrap();
        std::fs::set_permissions(d.join("etc/c.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(d.join("etc"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(unsafe_path(&d.join("etc/c.toml"), false), None);
        std::fs::set_permissions(d.join("etc"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = unsafe_path(&d.join("etc/c.toml"), false).unwrap();
        assert!(why.contains("/etc which is writable by group or others (mode 0777)"), "{why}");
        // A sticky world-writable dir is fine as a parent, never as the state dir itself.
        std::fs::set_permissions(d.join("etc"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(unsafe_path(&d.join("etc/c.toml"), false), None);
        assert!(unsafe_path(&d.join("etc"), true).unwrap().contains("mode 1777"));
        std::fs::set_permissions(d.join("etc"), std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink(d.join("etc"), d.join("st")).unwrap();
        assert_eq!(unsafe_path(&d.join("st"), true).as_deref(), Some("a symlink"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
