//! The tool's error: what this layer was doing, the cause it came from
//! (typed, kept as `source`), and what kind of failure it is. Printed as one
//! line: `{}` is the outermost words only, `{:#}` the whole chain
//! (`attach 3:7: VM win: device_add xenusb-3-7: QEMU refused: ...`), as
//! anyhow does; `main` prints `error: {:#}`.
//!
//! Each wire client keeps its own typed error (`backend::VmError` for QMP,
//! xenstore's and libvirt's beside it); they say their kind
//! (`Classify`), which the chain carries up, so a caller (and `check --json`)
//! tells a timeout from a refusal without reading words.

use std::error::Error as StdError;
use std::fmt;

/// What kind of failure, whatever layer it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The config file is missing, unreadable or wrong.
    Config,
    /// The VM (or its domain) is not running, or not ready yet.
    NotRunning,
    /// No answer within the invocation's budget (a lock, a socket, libvirtd).
    Timeout,
    /// The VM, its owner or its records said no.
    Refused,
    /// The VM's owner could not be reached (no socket, no xenstored, no libvirtd).
    Unreachable,
    /// Permissions keep us out (not root?).
    Denied,
    /// Anything else: I/O, a broken reply, a refused precondition.
    Failed,
}

/// The kind of a typed error from a lower layer.
pub trait Classify {
    fn kind(&self) -> ErrorKind;
}

pub struct Error {
    kind: ErrorKind,
    msg: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    /// Already logged as its own outcome's line: `main` does not log it again.
    logged: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure of this layer's own, with no cause below it.
    pub fn new(msg: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Failed, msg: msg.into(), source: None, logged: false }
    }

    /// A failure of `kind`.
    pub fn of(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error { kind, msg: msg.into(), source: None, logged: false }
    }

    /// `msg`, caused by `source` (whose kind it takes).
    pub fn caused<E: StdError + Classify + Send + Sync + 'static>(msg: impl Into<String>, source: E) -> Self {
        Error { kind: source.kind(), msg: msg.into(), source: Some(Box::new(source)), logged: false }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The same error, already logged (as an outcome's one line).
    pub fn mark_logged(mut self) -> Self {
        self.logged = true;
        self
    }

    pub fn is_logged(&self) -> bool {
        self.logged
    }

    /// The same error, said to be of `kind` (e.g. a read failure of the config file is a config error).
    pub fn as_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if f.alternate() {
            let mut cause = self.source.as_deref().map(|s| s as &(dyn StdError + 'static));
            while let Some(c) = cause {
                // `Error`'s own Display is one link; its sources follow here.
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:#} ({:?})", self.kind)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl Classify for std::io::Error {
    fn kind(&self) -> ErrorKind {
        match std::io::Error::kind(self) {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            std::io::ErrorKind::PermissionDenied => ErrorKind::Denied,
            _ => ErrorKind::Failed,
        }
    }
}

impl Classify for serde_json::Error {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Failed
    }
}

impl Classify for nix::errno::Errno {
    fn kind(&self) -> ErrorKind {
        match *self {
            nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => ErrorKind::Denied,
            nix::errno::Errno::EWOULDBLOCK => ErrorKind::Timeout,
            _ => ErrorKind::Failed,
        }
    }
}

impl Classify for std::str::Utf8Error {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Failed
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        // An io::Error's words are the whole message: no layer's words yet.
        Error { kind: Classify::kind(&e), msg: e.to_string(), source: None, logged: false }
    }
}

/// Adds this layer's words to a typed error from below: `ctx: cause`.
pub trait Context<T> {
    fn context(self, ctx: impl fmt::Display) -> Result<T>;
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: StdError + Classify + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, ctx: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::caused(ctx.to_string(), e))
    }
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::caused(f().to_string(), e))
    }
}

/// `bail!("...")` returns early with a formatted error.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::new(format!($($arg)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_prints_on_one_line_with_alternate_and_keeps_the_kind() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
        let inner: Result<()> = Err(io).context("reading QMP");
        let outer = inner.context("VM a").unwrap_err();
        assert_eq!(outer.to_string(), "VM a");
        assert_eq!(format!("{outer:#}"), "VM a: reading QMP: no answer");
        assert_eq!(outer.kind(), ErrorKind::Timeout);
        assert_eq!(Error::of(ErrorKind::Config, "bad key").kind(), ErrorKind::Config);
    }
}
