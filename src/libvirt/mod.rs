//! libvirt-managed domains. libvirtd owns each domain's QMP monitor (a second
//! client is queued and never greeted), so devices go in and out through
//! libvirtd: live `<hostdev>`s naming the exact host bus and device, each
//! carrying this tool's user alias (`ua-aua-<bus>-<addr>`). `virsh dumpxml`
//! stays true, the persistent definition is never touched, and an admin's
//! own hostdevs (any other alias) are left alone.
//!
//! The XML both ways is pure (`xml`). libvirtd is talked to by a helper
//! program, `auto-usb-attach-libvirt` (`conn`, cargo feature `libvirt`:
//! libvirt's C library through the `virt` crate), that the tool runs for a
//! libvirt domain's session only (`helper`: every reply waited for within
//! the invocation's budget), so the tool itself never loads libvirt.

#[cfg(feature = "libvirt")]
mod conn;
mod helper;
mod proto;
mod xml;

use crate::deadline::Deadline;
#[cfg(feature = "libvirt")]
pub use conn::serve;
pub use helper::HELPER;
use std::fmt;

pub use xml::{alias_of, hostdev_xml, view_of};

/// What went wrong talking to libvirtd, split where a caller acts differently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LvError {
    /// libvirtd is not there (no socket, refused), or this build has no libvirt.
    Unreachable(String),
    /// No answer within the invocation's budget.
    Timeout,
    /// The device is not in the domain (a detach of what is not there).
    DeviceMissing(String),
    /// Every USB port of the domain is taken, or it has no USB bus.
    NoUsbPort(String),
    /// libvirt refused for another reason: its own message.
    Refused(String),
}

impl fmt::Display for LvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LvError::Unreachable(m) => write!(f, "cannot reach libvirtd: {m}"),
            LvError::Timeout => f.write_str("libvirtd did not answer within the budget"),
            LvError::DeviceMissing(m) | LvError::NoUsbPort(m) | LvError::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LvError {}

/// One running domain, through libvirtd. `Session` drives it; tests use a fake.
pub trait DomainLink {
    /// The live domain XML (`virsh dumpxml`).
    fn live_xml(&mut self) -> Result<String, LvError>;
    /// Attach a device described by `xml`, live only.
    fn attach(&mut self, xml: &str) -> Result<(), LvError>;
    /// Detach a device described by `xml`, live only.
    fn detach(&mut self, xml: &str) -> Result<(), LvError>;
}

/// A running domain: its link, and its identity (uuid and run id: a restart
/// gives it a new id, as a restarted QEMU gives its socket a new inode).
pub struct Opened {
    pub link: Box<dyn DomainLink>,
    pub instance: String,
}

/// Connect to libvirtd at `uri` (through the libvirt helper) and find
/// running domain `name`; `Ok(Err(why))` when it is defined but not running,
/// or not defined at all.
pub fn open(uri: &str, name: &str, deadline: &Deadline) -> Result<Result<Opened, String>, LvError> {
    helper::open(uri, name, deadline)
}
