//! The single root under which every OS path is resolved.
//!
//! `--root DIR` (or `AUTO_USB_ATTACH_ROOT`) re-homes config, state, `/sys`,
//! `/dev`, the Xen run dir, QMP sockets and `/dev/log`, so tests and demos run
//! against a fixture tree and never touch the real `/`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Root(PathBuf);

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root(dir.into())
    }

    /// Absolute paths land under the root; relative paths stay relative to the
    /// working directory (as a user typing them would expect).
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        match p.strip_prefix("/") {
            Ok(rel) => self.0.join(rel),
            Err(_) => p.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_move_under_root() {
        let r = Root::new("/tmp/t");
        assert_eq!(r.path("/sys/bus/usb"), PathBuf::from("/tmp/t/sys/bus/usb"));
        assert_eq!(r.path("rel/x"), PathBuf::from("rel/x"));
        assert_eq!(Root::new("/").path("/run/xen"), PathBuf::from("/run/xen"));
    }
}
